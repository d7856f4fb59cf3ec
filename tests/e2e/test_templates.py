"""Every template of the library, run by name through the gateway's HTTP API on the platform's real processes.

The stack (simulator, router, executor, gateway) runs as processes, with private-network fetches allowed so the
templates that fetch pages can reach a page server on loopback. LLM steps use the simulator's ``echo`` model,
which answers with the text it was given: every reply is a real, known input that crossed gateway, RabbitMQ,
executor, router and simulator, so outcomes (files, JSON shapes, computed values) are asserted exactly.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from openclaw import cli
from openclaw.launcher import LocalStack, StackConfig
from services.gateway.auth import mint_token

pytestmark = pytest.mark.e2e

TENANT = "acme"
ECHO = "echo"
ARTICLE = (
    "<html><head><title>Launch notes</title><style>p {color: red}</style></head>"
    "<body><h1>Launch</h1><p>The new plan costs 12 euros a month.</p><script>var x = 1;</script></body></html>"
)
NEWS = {
    "/news/1": "<html><body><p>Rain is expected in Lyon.</p></body></html>",
    "/news/2": "<html><body><p>Markets closed higher.</p></body></html>",
}
ORDERS = {"items": [{"id": "A1", "total": 250}, {"id": "A2", "total": 40}, {"id": "A3", "total": 130}]}


class Pages(BaseHTTPRequestHandler):
    """Fixed pages for the fetching templates, and a webhook that records what is posted to it."""

    posted: ClassVar[list[dict[str, Any]]] = []

    def do_GET(self) -> None:
        if self.path == "/article.html":
            self._send(ARTICLE, "text/html")
        elif self.path in NEWS:
            self._send(NEWS[self.path], "text/html")
        elif self.path == "/api/orders":
            self._send(json.dumps(ORDERS), "application/json")
        elif self.path == "/report.txt":
            self._send("Quarterly revenue grew 8%.\nCosts were flat.\n", "text/plain")
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Pages.posted.append({"path": self.path, "body": json.loads(body)})
        self._send('{"ok": true}', "application/json")

    def _send(self, text: str, content_type: str) -> None:
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def pages() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(
    rabbitmq_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("templates")
    config = StackConfig.isolated(
        namespace=f"tpl{uuid.uuid4().hex[:8]}", log_dir=str(root / "log"), storage_root=str(root / "storage")
    )
    config.extra_env = {"OPENCLAW_EXECUTOR_ALLOW_PRIVATE_NETWORK": "true"}
    launched = LocalStack(config)
    try:
        launched.start(timeout_s=45)
    except RuntimeError:
        for name in ("simulator", "router", "executor-0", "gateway"):
            print(f"--- {name} ---\n{launched.log_text(name)[-4000:]}")
        launched.stop()
        raise
    yield launched
    codes = launched.stop()
    launched.purge()
    assert all(code == 0 for code in codes.values()), f"unclean exits on SIGTERM: {codes}"


@pytest.fixture(scope="module")
def token(stack: LocalStack) -> str:
    return mint_token(
        stack.config.jwt_secret, tenant=TENANT, ttl_s=3600, issuer="openclaw", audience="openclaw-api"
    )


@pytest.fixture(scope="module")
def client(stack: LocalStack, token: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=stack.config.gateway_url, headers=headers, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def storage(stack: LocalStack) -> Path:
    """The tenant's storage folder, as the executor process sees it."""
    folder = Path(stack.config.storage_root) / TENANT
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run(client: httpx.Client, template: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Submit a template by name over HTTP and return the ended task (its result on success)."""
    submitted = client.post("/v1/tasks", json={"template": template, "inputs": inputs})
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["id"]
    deadline = time.monotonic() + 40
    while True:
        task: dict[str, Any] = client.get(f"/v1/tasks/{task_id}", params={"wait": 10, "steps": "true"}).json()
        if task["status"] in ("succeeded", "failed", "cancelled"):
            assert task["status"] == "succeeded", json.dumps(task.get("error"), indent=2)
            return task
        assert time.monotonic() < deadline, f"task {task_id} still {task['status']}"


def put(storage: Path, path: str, text: str) -> Path:
    target = storage / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def unique(prefix: str) -> str:
    """A folder name of its own for one test, so reruns never meet an earlier run's files."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- documents and text -----------------------------------------------------------------------------------


def test_summarise_document_from_a_file_and_from_a_url(
    client: httpx.Client, storage: Path, pages: str
) -> None:
    folder = unique("handbook")
    text = "Staff may work remotely on Fridays.\nExpenses are filed monthly."
    put(storage, f"{folder}/handbook.md", text)
    out = run(
        client,
        "summarise-document",
        {"path": f"{folder}/handbook.md", "model": ECHO, "output": f"{folder}/summary.md"},
    )["result"]
    assert out["summary"] == text and out["source"] == f"{folder}/handbook.md"
    assert (storage / folder / "summary.md").read_text() == text

    web = run(client, "summarise-document", {"url": f"{pages}/report.txt", "model": ECHO, "style": "bullets"})
    assert web["result"]["summary"] == "Quarterly revenue grew 8%.\nCosts were flat.\n"
    assert web["result"]["source"] == f"{pages}/report.txt"
    assert web["steps"]["read"]["status"] == "skipped"


def test_translate_file_writes_under_the_language(client: httpx.Client, storage: Path) -> None:
    folder = unique("docs")
    put(storage, f"{folder}/welcome.md", "# Welcome\n\nYour workspace is ready.")
    out = run(
        client,
        "translate-file",
        {
            "path": f"{folder}/welcome.md",
            "target_language": "French",
            "model": ECHO,
            "glossary": {"workspace": "x"},
        },
    )["result"]
    written = storage / "translations" / "French" / folder / "welcome.md"
    assert out["file"] == f"translations/French/{folder}/welcome.md"
    assert written.read_text() == out["translation"] == "# Welcome\n\nYour workspace is ready."
    assert out["source_sha256"] == hashlib.sha256(b"# Welcome\n\nYour workspace is ready.").hexdigest()


def test_meeting_actions_collects_owner_task_and_due_date(client: httpx.Client, storage: Path) -> None:
    folder = unique("meetings")
    notes = (
        "Standup 25 Nov\n"
        "- Action: @ana ship the invoice export (due 2026-12-01)\n"
        "Discussed the outage.\n"
        "TODO: update the runbook\n"
    )
    put(storage, f"{folder}/notes.md", notes)
    out = run(
        client, "meeting-actions", {"path": f"{folder}/notes.md", "model": ECHO, "output": f"{folder}/a.md"}
    )
    result = out["result"]
    assert result["actions"] == [
        {"owner": "ana", "task": "ship the invoice export", "due": "2026-12-01"},
        {"owner": None, "task": "update the runbook", "due": None},
    ]
    markdown = (storage / folder / "a.md").read_text()
    assert "- [ ] @ana: ship the invoice export (due 2026-12-01)" in markdown
    assert "- [ ] update the runbook\n" in markdown


def test_extract_keywords_counts_words_and_finds_entities(client: httpx.Client, storage: Path) -> None:
    folder = unique("articles")
    text = (
        "Ada Lovelace wrote programs for the engine. The engine computed numbers; "
        "programs drove the engine. Contact ada@example.com or https://example.com/ada about 1843."
    )
    out = run(client, "extract-keywords", {"text": text, "top": 2, "output": f"{folder}/kw.json"})["result"]
    assert out["keywords"] == [{"word": "engine", "count": 3}, {"word": "programs", "count": 2}]
    assert out["names"] == ["Ada Lovelace"]
    assert out["emails"] == ["ada@example.com"] and out["urls"] == ["https://example.com/ada"]
    assert 1843 in out["numbers"]
    assert json.loads((storage / folder / "kw.json").read_text())["keywords"] == out["keywords"]


def test_compare_documents_diff_similarity_and_summary(client: httpx.Client, storage: Path) -> None:
    folder = unique("contracts")
    put(storage, f"{folder}/v1.md", "Term: 12 months\nPrice: 100\n")
    put(storage, f"{folder}/v2.md", "Term: 12 months\nPrice: 120\n")
    out = run(
        client,
        "compare-documents",
        {
            "before": f"{folder}/v1.md",
            "after": f"{folder}/v2.md",
            "model": ECHO,
            "output": f"{folder}/d.patch",
        },
    )["result"]
    patch = (storage / folder / "d.patch").read_text()
    assert "-Price: 100\n+Price: 120" in patch and patch.startswith(f"--- {folder}/v1.md")
    assert out["identical"] is False and 0.8 < out["similarity"] < 1
    assert out["changes"] == patch.strip()  # echo: the model was given exactly the diff


def test_redact_and_summarise_masks_before_the_model_sees_it(client: httpx.Client, storage: Path) -> None:
    folder = unique("redacted")
    text = "Call me on +44 20 7946 0958 or mail jo@example.com about card 4111 1111 1111 1111."
    out = run(client, "redact-and-summarise", {"text": text, "model": ECHO, "output": folder})["result"]
    summary = out["summary"]
    assert "jo@example.com" not in summary and "4111" not in summary and "7946" not in summary
    assert "[EMAIL]" in summary and "[CREDIT_CARD]" in summary and "[PHONE]" in summary
    assert (storage / folder / "redacted.txt").read_text() == summary  # echo: the model saw the redacted text


def test_summarise_long_document_maps_and_reduces(client: httpx.Client, storage: Path) -> None:
    folder = unique("annual")
    paragraphs = [f"Part {n} says revenue grew in region {n}." for n in range(1, 9)]
    put(storage, f"{folder}/report.txt", " ".join(paragraphs))
    out = run(
        client,
        "summarise-long-document",
        {"path": f"{folder}/report.txt", "chunk_size": 500, "model": ECHO, "output": f"{folder}/s.md"},
    )["result"]
    assert out["chunks"] == 1 and out["refused"] is None  # 335 characters: one chunk
    small = run(
        client,
        "summarise-long-document",
        {"path": f"{folder}/report.txt", "chunk_size": 500, "max_chunks": 1, "model": ECHO},
    )["result"]
    assert small["chunks"] == 1 and small["summary"] == out["summary"]
    put(storage, f"{folder}/long.txt", " ".join(paragraphs * 4))  # 1343 characters: three chunks
    long = run(
        client,
        "summarise-long-document",
        {"path": f"{folder}/long.txt", "chunk_size": 500, "model": ECHO, "output": f"{folder}/l.md"},
    )["result"]
    assert long["chunks"] == 3 and len(long["parts"]) == 3
    assert " ".join(long["parts"]).split() == " ".join(paragraphs * 4).split()  # echo: each part is its chunk
    assert (storage / folder / "l.md").read_text() == long["summary"] == "\n\n".join(long["parts"])
    refused = run(
        client,
        "summarise-long-document",
        {"path": f"{folder}/long.txt", "chunk_size": 500, "max_chunks": 2, "model": ECHO},
    )["result"]
    assert refused["refused"] == "the document splits into more chunks than max_chunks"
    assert refused["summary"] is None and refused["file"] is None


# --- support and routing ----------------------------------------------------------------------------------


def test_triage_support_routes_and_files_a_record(client: httpx.Client, storage: Path) -> None:
    # echo answers with the message, so the message is written to be exactly a label's text.
    task = run(client, "triage-support", {"message": "Billing", "model": ECHO})
    out = task["result"]
    assert out["label"] == "billing" and out["queue"] == "finance"
    record = json.loads((storage / out["file"]).read_text())
    assert out["file"] == f"triage/finance/{task['id']}.json"
    assert record["label"] == "billing" and record["emails"] == [] and record["order_ids"] == []

    other = run(
        client,
        "triage-support",
        {"message": "Other", "model": ECHO, "labels": ["refund", "other"], "routes": {"refund": "finance"}},
    )["result"]
    assert other["label"] == "other" and other["queue"] == "support"  # no route: the default queue


def test_triage_support_extracts_ids_and_emails(client: httpx.Client) -> None:
    message = "ORD-10442 ana@example.com"
    out = run(
        client,
        "triage-support",
        {"message": message, "model": ECHO, "labels": [message, "other"], "routes": {message: "orders"}},
    )["result"]
    assert out["emails"] == ["ana@example.com"] and out["order_ids"] == ["ORD-10442"]
    assert out["queue"] == "orders"


def test_route_ticket_logs_and_posts_the_decision(client: httpx.Client, storage: Path, pages: str) -> None:
    log = f"{unique('tickets')}/routing.jsonl"
    inputs = {
        "title": "Outage",
        "categories": {"outage": "sre", "bug": "web", "question": "support"},
        "webhook_url": f"{pages}/hooks/sre",
        "log": log,
        "model": ECHO,
    }
    first = run(client, "route-ticket", inputs)["result"]
    assert first == {"category": "outage", "team": "sre", "log": log, "notified": True}
    second = run(client, "route-ticket", {**inputs, "title": "Question", "webhook_url": None})["result"]
    assert second["team"] == "support" and second["notified"] is False
    lines = [json.loads(line) for line in (storage / log).read_text().splitlines()]
    assert [(d["category"], d["team"]) for d in lines] == [("outage", "sre"), ("question", "support")]
    posted = [p for p in Pages.posted if p["path"] == "/hooks/sre" and p["body"]["title"] == "Outage"]
    assert posted and posted[-1]["body"]["team"] == "sre"


def test_webhook_alert_builds_and_posts_the_chat_payload(client: httpx.Client, pages: str) -> None:
    event = {
        "title": "Disk 91% full",
        "severity": "warning",
        "source": "prometheus",
        "url": "https://g.example/d",
    }
    slack = run(client, "webhook-alert", {"event": event, "webhook_url": f"{pages}/hooks/slack"})["result"]
    text = ":warning: *[WARNING] Disk 91% full* (prometheus)\n<https://g.example/d|Open>"
    assert slack == {"payload": {"text": text}, "posted": True, "status": 200}
    assert Pages.posted[-1] == {"path": "/hooks/slack", "body": {"text": text}}
    discord = run(client, "webhook-alert", {"event": {"title": "Deploy done"}, "platform": "discord"})[
        "result"
    ]
    assert discord["payload"] == {"content": ":information_source: *[INFO] Deploy done*"}
    assert discord["posted"] is False and discord["status"] is None


def test_review_sentiment_counts_each_sentiment(client: httpx.Client, storage: Path) -> None:
    # echo answers with the review itself, so each review is written as the sentiment it should get.
    reviews = ["Positive", "negative", "Positive.", "mixed"]
    out = run(client, "review-sentiment", {"reviews": reviews, "model": ECHO})["result"]
    assert [r["sentiment"] for r in out["reviews"]] == ["positive", "negative", "positive", "mixed"]
    assert out["counts"] == {"positive": 2, "negative": 1, "mixed": 1}
    assert json.loads((storage / out["file"]).read_text())["counts"] == out["counts"]


def test_extract_invoice_validates_and_totals(client: httpx.Client, storage: Path) -> None:
    invoice = {
        "invoice_number": unique("INV"),
        "vendor": "ACME Tools Ltd",
        "currency": "EUR",
        "total": 1240.0,
        "tax": 40.0,
        "line_items": [{"description": "Drill", "amount": 1000.0}, {"description": "Bits", "amount": 200.0}],
    }
    folder = unique("invoices")
    put(storage, f"{folder}/in.txt", json.dumps(invoice))  # echo: the "model" returns the text as its JSON
    out = run(client, "extract-invoice", {"path": f"{folder}/in.txt", "model": ECHO, "folder": folder})[
        "result"
    ]
    assert out["invoice"] == invoice
    assert out["check"] == {"line_items_total": 1200.0, "total": 1240.0, "tax": 40.0, "items": 2}
    saved = json.loads((storage / folder / f"{invoice['invoice_number']}.json").read_text())
    assert saved["invoice"] == invoice


def test_faq_answer_uses_the_closest_entry(client: httpx.Client, storage: Path) -> None:
    folder = unique("kb")
    faq = [
        {"question": "How do I reset my password?", "answer": "Use the link on the sign-in page."},
        {"question": "Where can I download invoices?", "answer": "Under Billing > Invoices."},
    ]
    put(storage, f"{folder}/faq.json", json.dumps(faq))
    out = run(
        client,
        "faq-answer",
        {"knowledge": f"{folder}/faq.json", "question": "how to download an invoice", "model": ECHO},
    )["result"]
    assert out["matched"]["index"] == 1 and out["answered"] is True
    assert out["answer"].startswith("Question: how to download an invoice")
    assert "A: Under Billing > Invoices." in out["answer"]  # the entry given to the model
    unmatched = run(
        client,
        "faq-answer",
        {"knowledge": f"{folder}/faq.json", "question": "zzz", "min_similarity": 0.9, "model": ECHO},
    )["result"]
    assert unmatched["answered"] is False and unmatched["answer"] is None


# --- data -------------------------------------------------------------------------------------------------


def test_clean_csv_trims_infers_filters_and_dedupes(client: httpx.Client, storage: Path) -> None:
    folder = unique("uploads")
    put(
        storage,
        f"{folder}/customers.csv",
        "name , email ,age\n Ana , ana@example.com , 36\nBo,,41\nAna,ana@example.com,37\n",
    )
    out = run(
        client,
        "clean-csv",
        {
            "path": f"{folder}/customers.csv",
            "dedupe_key": "email",
            "keep_if": "email != null",
            "output": f"{folder}/c.json",
        },
    )["result"]
    assert out["counts"] == {"rows_in": 3, "rows_kept": 2, "rows_out": 1}
    assert json.loads((storage / folder / "c.json").read_text()) == [
        {"name": "Ana", "email": "ana@example.com", "age": 36}
    ]


def test_csv_report_statistics_histogram_and_groups(client: httpx.Client, storage: Path) -> None:
    folder = unique("sales")
    put(storage, f"{folder}/s.csv", "region,revenue\nnorth,10\nsouth,20\nnorth,30\neast,40\n")
    out = run(
        client,
        "csv-report",
        {
            "path": f"{folder}/s.csv",
            "column": "revenue",
            "group_by": "region",
            "bins": 2,
            "output": f"{folder}/r.json",
        },
    )["result"]
    stats = out["statistics"]
    assert stats["count"] == 4 and stats["mean"] == 25 and stats["median"] == 25 and stats["max"] == 40
    assert [b["count"] for b in out["histogram"]["bins"]] == [2, 2]
    assert out["groups"] == {"north": 2, "south": 1, "east": 1}
    assert json.loads((storage / folder / "r.json").read_text())["statistics"] == stats


def test_list_report_statistics_percentiles_groups_and_top(client: httpx.Client) -> None:
    records = [
        {"city": "Lyon", "ms": 120},
        {"city": "Oslo", "ms": 340},
        {"city": "Lyon", "ms": 95},
        {"city": "Rome"},
    ]
    out = run(
        client,
        "list-report",
        {"records": records, "field": "ms", "group_by": "city", "top": 2, "percentiles": [50]},
    )["result"]
    report = out["report"]
    assert report["statistics"]["count"] == 3 and report["statistics"]["min"] == 95
    assert report["percentiles"] == [120]
    assert report["groups"] == {"Lyon": 2, "Oslo": 1, "Rome": 1}
    assert report["top"] == [{"city": "Oslo", "ms": 340}, {"city": "Lyon", "ms": 120}]
    assert out["file"] is None


def test_convert_format_detects_yaml_and_writes_toml(client: httpx.Client, storage: Path) -> None:
    folder = unique("config")
    put(storage, f"{folder}/app.yaml", "name: shop\nport: 8080\ndb:\n  host: db1\n")
    out = run(
        client,
        "convert-format",
        {"path": f"{folder}/app.yaml", "target": "json", "output": f"{folder}/app.json"},
    )
    assert out["result"]["source"] == "yaml"
    assert json.loads((storage / folder / "app.json").read_text()) == {
        "name": "shop",
        "port": 8080,
        "db": {"host": "db1"},
    }
    csv_out = run(
        client,
        "convert-format",
        {"path": f"{folder}/app.json", "source": "json", "target": "toml", "output": f"{folder}/app.toml"},
    )["result"]
    assert csv_out["source"] == "json" and 'host = "db1"' in (storage / folder / "app.toml").read_text()


def test_json_extract_fetches_reshapes_and_saves(client: httpx.Client, storage: Path, pages: str) -> None:
    path = f"{unique('reports')}/big.json"
    out = run(
        client,
        "json-extract",
        {"url": f"{pages}/api/orders", "expression": "items[?total > `100`].id", "path": path},
    )["result"]
    assert out == {"result": ["A1", "A3"], "file": path}
    assert json.loads((storage / path).read_text()) == ["A1", "A3"]


# --- files ------------------------------------------------------------------------------------------------


def test_archive_folder_packs_checksums_and_writes_a_manifest(client: httpx.Client, storage: Path) -> None:
    folder = unique("reports")
    put(storage, f"{folder}/a.txt", "alpha")
    put(storage, f"{folder}/sub/b.txt", "beta")
    archive = f"archives/{folder}.tar.gz"
    out = run(client, "archive-folder", {"folder": folder, "archive": archive})["result"]
    data = (storage / archive).read_bytes()
    assert out["sha256"] == hashlib.sha256(data).hexdigest()
    assert (storage / f"{archive}.sha256").read_text() == f"{out['sha256']}  {archive}\n"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        assert {f"{folder}/a.txt", f"{folder}/sub/b.txt"} <= set(tar.getnames())
        member = tar.extractfile(f"{folder}/sub/b.txt")
        assert member is not None and member.read() == b"beta"


def test_organise_by_date_moves_files_into_month_folders(client: httpx.Client, storage: Path) -> None:
    folder = unique("camera")
    march = datetime(2024, 3, 15, 12, tzinfo=UTC).timestamp()
    july = datetime(2025, 7, 1, 8, tzinfo=UTC).timestamp()
    for name, stamp in (("a.jpg", march), ("b.jpg", july), ("notes.txt", july)):
        os.utime(put(storage, f"{folder}/{name}", name), (stamp, stamp))
    dest = f"{folder}-sorted"
    planned = run(
        client,
        "organise-by-date",
        {"folder": folder, "pattern": "*.jpg", "destination": dest, "dry_run": True},
    )
    assert {m["to"] for m in planned["result"]["moves"]} == {f"{dest}/2024/03/a.jpg", f"{dest}/2025/07/b.jpg"}
    assert (storage / folder / "a.jpg").exists()  # a dry run moves nothing
    moved = run(client, "organise-by-date", {"folder": folder, "pattern": "*.jpg", "destination": dest})
    assert all(m["moved"] for m in moved["result"]["moves"])
    assert (storage / dest / "2024" / "03" / "a.jpg").read_text() == "a.jpg"
    assert (storage / dest / "2025" / "07" / "b.jpg").read_text() == "b.jpg"
    assert not (storage / folder / "a.jpg").exists() and (storage / folder / "notes.txt").exists()


# --- the web ----------------------------------------------------------------------------------------------


def test_scrape_and_summarise_strips_html_and_takes_the_title(
    client: httpx.Client, storage: Path, pages: str
) -> None:
    output = f"{unique('research')}/launch.json"
    out = run(
        client, "scrape-and-summarise", {"url": f"{pages}/article.html", "model": ECHO, "output": output}
    )
    result = out["result"]
    assert result["title"] == "Launch notes"
    assert "The new plan costs 12 euros a month." in result["summary"]
    assert (
        "var x" not in result["summary"]
        and "color" not in result["summary"]
        and "<p>" not in result["summary"]
    )
    saved = json.loads((storage / output).read_text())
    assert saved["url"] == f"{pages}/article.html" and saved["summary"] == result["summary"]


def test_daily_digest_summarises_every_page(client: httpx.Client, storage: Path, pages: str) -> None:
    output = f"{unique('digests')}/d.md"
    urls = [f"{pages}/news/1", f"{pages}/news/2"]
    out = run(client, "daily-digest", {"urls": urls, "title": "Morning", "model": ECHO, "output": output})[
        "result"
    ]
    assert [p["summary"] for p in out["pages"]] == ["Rain is expected in Lyon.", "Markets closed higher."]
    assert (storage / output).read_text() == (
        f"# Morning\n\n## {urls[0]}\n\nRain is expected in Lyon.\n\n## {urls[1]}\n\nMarkets closed higher.\n"
    )


def test_summarise_url_and_data_report(client: httpx.Client, pages: str) -> None:
    summary = run(client, "summarise-url", {"url": f"{pages}/report.txt", "model": ECHO, "sentences": 2})[
        "result"
    ]
    assert summary["summary"].startswith("Summarise this document in at most 2 sentences.")
    assert "Quarterly revenue grew 8%." in summary["summary"]
    report = run(client, "data-report", {"url": f"{pages}/report.txt", "model": ECHO, "prompt": "Report"})[
        "result"
    ]
    assert report["summary"].startswith("Report") and "Costs were flat." in report["summary"]
    assert report["sha256"] == hashlib.sha256(b"Quarterly revenue grew 8%.\nCosts were flat.\n").hexdigest()


def _waiting(client: httpx.Client, task_id: str) -> None:
    deadline = time.monotonic() + 30
    while client.get(f"/v1/tasks/{task_id}").json()["status"] != "waiting":
        assert time.monotonic() < deadline, f"task {task_id} never started waiting"
        time.sleep(0.1)


def test_publish_with_approval_waits_for_the_signal(
    stack: LocalStack, token: str, client: httpx.Client, storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = f"{unique('published')}/launch.txt"
    inputs = {"text": "we launch on monday", "path": path, "model": ECHO}
    approved = client.post("/v1/tasks", json={"template": "publish-with-approval", "inputs": inputs}).json()
    _waiting(client, approved["id"])
    assert not (storage / path).exists()
    gateway = ["tasks", "--gateway", stack.config.gateway_url, "--token", token]
    payload = '{"approved": true, "by": "ana"}'
    assert cli.main([*gateway, "signal", approved["id"], "approval", "--payload", payload]) == 0
    capsys.readouterr()
    assert cli.main([*gateway, "get", approved["id"], "--wait", "--timeout", "30"]) == 0
    result = json.loads(capsys.readouterr().out)["result"]
    assert result == {
        "published": True,
        "file": path,
        "draft": "we launch on monday",
        "approval": {"approved": True, "by": "ana"},
    }
    assert (storage / path).read_text() == "we launch on monday"

    rejected_path = f"{unique('published')}/launch.txt"
    rejected = client.post(
        "/v1/tasks", json={"template": "publish-with-approval", "inputs": {**inputs, "path": rejected_path}}
    ).json()
    _waiting(client, rejected["id"])
    signal = client.post(f"/v1/tasks/{rejected['id']}/signals/approval", json={"approved": False})
    assert signal.status_code == 202, signal.text
    deadline = time.monotonic() + 30
    while (task := client.get(f"/v1/tasks/{rejected['id']}", params={"wait": 10}).json())[
        "status"
    ] != "succeeded":
        assert task["status"] not in ("failed", "cancelled") and time.monotonic() < deadline, task
    assert task["result"]["published"] is False and not (storage / rejected_path).exists()


# --- submit-time validation and the CLI -------------------------------------------------------------------


def test_bad_inputs_are_refused_at_submit_naming_the_input(client: httpx.Client) -> None:
    cases = [
        ("translate-file", {"path": "a.txt"}, "inputs.target_language: required"),
        ("summarise-url", {"url": "ftp://x", "sentences": 0}, "inputs.sentences"),
        ("summarise-url", {"url": "https://x", "colour": "red"}, "inputs.colour: unknown input"),
        ("summarise-document", {"path": "a", "url": "https://x"}, "give only one of path or url"),
        ("daily-digest", {"urls": ["https://a", "file:///etc/passwd"]}, "inputs.urls[1]"),
    ]
    for template, inputs, expected in cases:
        response = client.post("/v1/tasks", json={"template": template, "inputs": inputs})
        assert response.status_code == 400, response.text
        assert expected in response.json()["error"]["message"], response.text
    unknown = client.post("/v1/tasks", json={"template": "no-such-template", "inputs": {}})
    assert unknown.status_code == 404 and "summarise-url" in unknown.json()["error"]["message"]


def test_cli_submits_waits_gets_watches_and_cancels(
    stack: LocalStack,
    token: str,
    storage: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("OPENCLAW_TOKEN", token)
    gateway = ["tasks", "--gateway", stack.config.gateway_url]
    records = json.dumps([{"v": 1}, {"v": 5}])
    code = cli.main(
        [
            *gateway,
            "submit",
            "--template",
            "list-report",
            "--input",
            f"records={records}",
            "--input",
            "field=v",
            "--wait",
        ]
    )
    task = json.loads(capsys.readouterr().out)
    assert code == 0 and task["status"] == "succeeded"
    assert task["result"]["report"]["statistics"]["mean"] == 3

    assert cli.main([*gateway, "get", task["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == task["id"]
    assert cli.main([*gateway, "watch", task["id"]]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["type"] == "task.queued" and events[-1]["type"] == "task.succeeded"
    assert cli.main([*gateway, "cancel", task["id"]]) == 0  # an ended task is left as it is
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"

    workflow = tmp_path / "wf.json"
    workflow.write_text(
        json.dumps({"name": "sum", "steps": [{"type": "math_sum", "params": {"items": [1, 2]}}]})
    )
    assert cli.main([*gateway, "submit", "--workflow", str(workflow), "--wait"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] == 3

    assert cli.main([*gateway, "submit", "--template", "translate-file", "--input", "path=a.txt"]) == 2
    assert "inputs.target_language: required" in capsys.readouterr().err
    monkeypatch.delenv("OPENCLAW_TOKEN")
    assert cli.main([*gateway, "get", task["id"]]) == 2
    assert "no token" in capsys.readouterr().err
