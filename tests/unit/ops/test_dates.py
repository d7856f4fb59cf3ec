"""Date and time operations: results (zones, DST, month ends), edge cases and the errors bad input gets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from tests.unit.ops.harness import ctx_for, run_op


@pytest.fixture
def ctx(tmp_path: Path) -> OpContext:
    return ctx_for(tmp_path)


def prev(tmp_path: Path, value: Any) -> OpContext:
    return ctx_for(tmp_path, prev=value, has_prev=True)


async def test_now_is_aware_and_in_the_zone(ctx: OpContext) -> None:
    before = datetime.now(UTC)
    now = datetime.fromisoformat(await run_op("date_now", {}, ctx))
    assert now.utcoffset() == timedelta(0) and now >= before - timedelta(seconds=1)
    tokyo = datetime.fromisoformat(await run_op("date_now", {"zone": "Asia/Tokyo"}, ctx))
    assert tokyo.utcoffset() == timedelta(hours=9)
    with pytest.raises(InvalidInputError, match="zone: unknown time zone 'Mars/Olympus'"):
        await run_op("date_now", {"zone": "Mars/Olympus"}, ctx)
    with pytest.raises(InvalidInputError, match="zone: unknown time zone"):
        await run_op("date_now", {"zone": "../../etc/passwd"}, ctx)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"text": "2026-11-25T10:30:00Z"}, "2026-11-25T10:30:00+00:00"),
        ({"text": "2026-11-25 10:30"}, "2026-11-25T10:30:00+00:00"),
        ({"text": "2026-11-25 10:30", "default_zone": "Europe/Paris"}, "2026-11-25T10:30:00+01:00"),
        ({"text": "25 Nov 2026 10:30 +0200"}, "2026-11-25T10:30:00+02:00"),
        ({"text": "01/02/2026", "dayfirst": True}, "2026-02-01T00:00:00+00:00"),
        ({"text": "01/02/2026"}, "2026-01-02T00:00:00+00:00"),
        ({"text": "25.11.2026 08h15", "format": "%d.%m.%Y %Hh%M"}, "2026-11-25T08:15:00+00:00"),
        ({"text": "2026-11-25T10:30:00Z", "zone": "America/New_York"}, "2026-11-25T05:30:00-05:00"),
    ],
)
async def test_parse(ctx: OpContext, params: dict[str, Any], expected: str) -> None:
    assert await run_op("date_parse", params, ctx) == expected


async def test_parse_errors_name_the_param(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="text: cannot read 'not a date' as a date/time"):
        await run_op("date_parse", {"text": "not a date"}, ctx_for(tmp_path))
    with pytest.raises(InvalidInputError, match="text: '2026-11-25' does not match format '%d/%m/%Y'"):
        await run_op("date_parse", {"text": "2026-11-25", "format": "%d/%m/%Y"}, ctx_for(tmp_path))
    with pytest.raises(InvalidInputError, match="text: expected a date/time string, got a number"):
        await run_op("date_parse", {}, prev(tmp_path, 1234))
    with pytest.raises(InvalidInputError, match="default_zone: unknown time zone 'Nowhere'"):
        await run_op("date_parse", {"text": "2026-01-01", "default_zone": "Nowhere"}, ctx_for(tmp_path))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "2026-11-25T10:30:00+00:00"),
        ({"format": "date"}, "2026-11-25"),
        ({"format": "time"}, "10:30:00+00:00"),
        ({"format": "rfc2822"}, "Wed, 25 Nov 2026 10:30:00 +0000"),
        ({"format": "%A %d %B %Y, %H:%M"}, "Wednesday 25 November 2026, 10:30"),
        ({"format": "%H:%M %Z", "zone": "Asia/Kolkata"}, "16:00 IST"),
    ],
)
async def test_format(tmp_path: Path, params: dict[str, Any], expected: str) -> None:
    assert await run_op("date_format", params, prev(tmp_path, "2026-11-25T10:30:00Z")) == expected


async def test_add_and_subtract(ctx: OpContext) -> None:
    base = {"value": "2026-01-31T12:00:00+00:00"}
    assert await run_op("date_add", {**base, "months": 1}, ctx) == "2026-02-28T12:00:00+00:00"
    assert await run_op("date_add", {**base, "duration": "P1DT2H30M"}, ctx) == "2026-02-01T14:30:00+00:00"
    assert await run_op("date_add", {**base, "years": 1, "hours": -12}, ctx) == "2027-01-31T00:00:00+00:00"
    assert await run_op("date_subtract", {**base, "duration": "P1M"}, ctx) == "2025-12-31T12:00:00+00:00"
    assert (
        await run_op("date_subtract", {**base, "weeks": 1, "minutes": 30}, ctx) == "2026-01-24T11:30:00+00:00"
    )
    assert await run_op("date_add", {**base, "duration": "-PT1H"}, ctx) == "2026-01-31T11:00:00+00:00"


async def test_add_days_keeps_wall_time_across_dst_and_hours_are_elapsed(ctx: OpContext) -> None:
    # Europe/Paris moves from +01:00 to +02:00 at 02:00 on 2026-03-29.
    base = {"value": "2026-03-28T12:00:00", "default_zone": "Europe/Paris"}
    assert await run_op("date_add", {**base, "days": 1}, ctx) == "2026-03-29T12:00:00+02:00"
    assert await run_op("date_add", {**base, "duration": "PT24H"}, ctx) == "2026-03-29T13:00:00+02:00"


async def test_add_errors(ctx: OpContext) -> None:
    with pytest.raises(ValidationError, match="give a duration or at least one of"):
        await run_op("date_add", {"value": "2026-01-01"}, ctx)
    with pytest.raises(InvalidInputError, match="duration: '1 day' is not an ISO 8601 duration"):
        await run_op("date_add", {"value": "2026-01-01", "duration": "1 day"}, ctx)
    with pytest.raises(InvalidInputError, match="duration: fractional months are ambiguous"):
        await run_op("date_add", {"value": "2026-01-01", "duration": "P1.5M"}, ctx)
    with pytest.raises(InvalidInputError, match=r"value: the result is outside the years 1\.\.9999"):
        await run_op("date_add", {"value": "9999-12-31", "days": 1}, ctx)


@pytest.mark.parametrize(
    ("unit", "expected"),
    [("seconds", 90000), ("minutes", 1500), ("hours", 25), ("days", 25 / 24), ("weeks", 90000 / 604800)],
)
async def test_diff_elapsed(ctx: OpContext, unit: str, expected: float) -> None:
    params = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T01:00:00Z", "unit": unit}
    assert await run_op("date_diff", params, ctx) == pytest.approx(expected)


async def test_diff_calendar_units_and_direction(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    assert (
        await run_op("date_diff", {"start": "2026-01-31", "end": "2027-03-30", "unit": "months"}, ctx) == 13
    )
    assert await run_op("date_diff", {"start": "2026-01-31", "end": "2027-03-30", "unit": "years"}, ctx) == 1
    assert (
        await run_op("date_diff", {"start": "2026-05-01", "end": "2026-01-01", "unit": "months"}, ctx) == -4
    )
    assert (
        await run_op("date_diff", {"start": "2026-01-01T01:00:00+01:00"}, prev(tmp_path, "2026-01-01")) == 0
    )
    with pytest.raises(InvalidInputError, match="end: cannot read"):
        await run_op("date_diff", {"start": "2026-01-01", "end": "soon"}, ctx)


async def test_convert_zone(ctx: OpContext) -> None:
    params = {"value": "2026-07-01T12:00:00Z", "to_zone": "America/Los_Angeles"}
    assert await run_op("date_convert_zone", params, ctx) == "2026-07-01T05:00:00-07:00"
    with pytest.raises(InvalidInputError, match="to_zone: unknown time zone 'PST8PDT2'"):
        await run_op("date_convert_zone", {**params, "to_zone": "PST8PDT2"}, ctx)


@pytest.mark.parametrize(
    ("unit", "extra", "start", "end"),
    [
        ("day", {}, "2026-11-25T00:00:00+00:00", "2026-11-25T23:59:59.999999+00:00"),
        ("hour", {}, "2026-11-25T10:00:00+00:00", "2026-11-25T10:59:59.999999+00:00"),
        ("week", {}, "2026-11-23T00:00:00+00:00", "2026-11-29T23:59:59.999999+00:00"),
        ("week", {"week_start": "sunday"}, "2026-11-22T00:00:00+00:00", "2026-11-28T23:59:59.999999+00:00"),
        ("month", {}, "2026-11-01T00:00:00+00:00", "2026-11-30T23:59:59.999999+00:00"),
        ("quarter", {}, "2026-10-01T00:00:00+00:00", "2026-12-31T23:59:59.999999+00:00"),
        ("year", {}, "2026-01-01T00:00:00+00:00", "2026-12-31T23:59:59.999999+00:00"),
        ("day", {"zone": "Asia/Tokyo"}, "2026-11-25T00:00:00+09:00", "2026-11-25T23:59:59.999999+09:00"),
    ],
)
async def test_start_and_end_of(
    ctx: OpContext, unit: str, extra: dict[str, Any], start: str, end: str
) -> None:
    params = {"value": "2026-11-25T10:30:00Z", "unit": unit, **extra}
    assert await run_op("date_start_of", params, ctx) == start
    assert await run_op("date_end_of", params, ctx) == end


async def test_start_of_day_on_a_dst_day_keeps_the_real_offset(ctx: OpContext) -> None:
    # Santiago skips midnight on 2026-09-06 (clocks jump from 00:00 to 01:00).
    params = {"value": "2026-09-06T12:00:00", "default_zone": "America/Santiago", "unit": "day"}
    start = datetime.fromisoformat(await run_op("date_start_of", params, ctx))
    assert start == datetime(2026, 9, 6, 1, tzinfo=ZoneInfo("America/Santiago"))


async def test_weekday_and_parts(tmp_path: Path) -> None:
    ctx = prev(tmp_path, "2026-11-25T10:30:15.5+05:30")
    assert await run_op("date_weekday", {}, ctx) == "Wednesday"
    parts = await run_op("date_parts", {}, ctx)
    assert parts["year"] == 2026 and parts["month"] == 11 and parts["day"] == 25
    assert (parts["hour"], parts["minute"], parts["second"], parts["microsecond"]) == (10, 30, 15, 500000)
    assert parts["iso_weekday"] == 3 and parts["iso_week"] == 48 and parts["quarter"] == 4
    assert parts["day_of_year"] == 329 and parts["utc_offset_seconds"] == 19800
    with pytest.raises(InvalidInputError, match="value: required"):
        await run_op("date_weekday", {}, ctx_for(tmp_path))


async def test_unix_round_trips(ctx: OpContext) -> None:
    assert await run_op("date_from_unix", {"timestamp": 0}, ctx) == "1970-01-01T00:00:00+00:00"
    assert await run_op("date_from_unix", {"timestamp": 1.5}, ctx) == "1970-01-01T00:00:01.500000+00:00"
    ns = 1_764_066_600_123_456_789
    assert (
        await run_op("date_from_unix", {"timestamp": ns, "unit": "ns"}, ctx)
        == "2025-11-25T10:30:00.123456+00:00"
    )
    paris = await run_op(
        "date_from_unix", {"timestamp": 1_764_066_600_000, "unit": "ms", "zone": "Europe/Paris"}, ctx
    )
    assert paris == "2025-11-25T11:30:00+01:00"
    assert await run_op("date_to_unix", {"value": paris}, ctx) == 1_764_066_600
    assert await run_op("date_to_unix", {"value": paris, "unit": "ms"}, ctx) == 1_764_066_600_000
    assert await run_op("date_to_unix", {"value": "1970-01-01T00:00:00.25Z"}, ctx) == 0.25
    assert await run_op("date_to_unix", {"value": "1969-12-31T23:59:59Z", "unit": "us"}, ctx) == -1_000_000
    with pytest.raises(InvalidInputError, match=r"timestamp: .* is outside the years"):
        await run_op("date_from_unix", {"timestamp": 10**20}, ctx)


HOLIDAYS = ["2026-12-25", "2026-12-28"]


async def test_business_days(ctx: OpContext) -> None:
    assert await run_op("date_is_business_day", {"value": "2026-12-24"}, ctx) is True
    assert await run_op("date_is_business_day", {"value": "2026-12-25", "holidays": HOLIDAYS}, ctx) is False
    assert await run_op("date_is_business_day", {"value": "2026-12-26"}, ctx) is False
    assert await run_op("date_is_business_day", {"value": "2026-12-26", "weekend": [5]}, ctx) is True
    add = {"value": "2026-12-24T09:00:00Z", "holidays": HOLIDAYS}
    assert await run_op("date_add_business_days", {**add, "days": 1}, ctx) == "2026-12-29T09:00:00+00:00"
    assert await run_op("date_add_business_days", {**add, "days": -4}, ctx) == "2026-12-18T09:00:00+00:00"
    assert await run_op("date_add_business_days", {**add, "value": "2026-12-26", "days": 0}, ctx) == (
        "2026-12-29T00:00:00+00:00"
    )
    between = {"value": "2026-12-21", "end": "2027-01-04", "holidays": HOLIDAYS}
    assert await run_op("date_business_days_between", between, ctx) == 8
    assert (
        await run_op(
            "date_business_days_between", {**between, "value": "2027-01-04", "end": "2026-12-21"}, ctx
        )
        == -8
    )


async def test_business_day_errors(ctx: OpContext) -> None:
    with pytest.raises(InvalidInputError, match=r"holidays\[1\]: 'Christmas' is not a date"):
        await run_op(
            "date_is_business_day", {"value": "2026-12-24", "holidays": ["2026-01-01", "Christmas"]}, ctx
        )
    with pytest.raises(ValidationError, match="weekend"):
        await run_op("date_is_business_day", {"value": "2026-12-24", "weekend": [0]}, ctx)
    with pytest.raises(InvalidInputError, match="end: at most 200 years"):
        await run_op("date_business_days_between", {"value": "1800-01-01", "end": "2026-01-01"}, ctx)


async def test_cron_next(ctx: OpContext) -> None:
    runs = await run_op(
        "date_cron_next",
        {"expression": "*/15 9-17 * * mon-fri", "start": "2026-11-27T17:40:00Z", "count": 3},
        ctx,
    )
    assert runs == ["2026-11-27T17:45:00+00:00", "2026-11-30T09:00:00+00:00", "2026-11-30T09:15:00+00:00"]
    # 02:30 does not exist in Paris on 2026-03-29: the run happens when the clock jumps.
    paris = await run_op(
        "date_cron_next",
        {"expression": "30 2 * * *", "start": "2026-03-28T12:00:00", "zone": "Europe/Paris", "count": 2},
        ctx,
    )
    assert paris == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
    upcoming = await run_op("date_cron_next", {"expression": "@hourly", "count": 1}, ctx)
    assert datetime.fromisoformat(upcoming[0]) > datetime.now(UTC)


@pytest.mark.parametrize("expression", ["61 * * * *", "not cron", "0 0 30 2 *"])
async def test_cron_refuses_bad_or_impossible_schedules(ctx: OpContext, expression: str) -> None:
    with pytest.raises(InvalidInputError, match="expression: "):
        await run_op("date_cron_next", {"expression": expression, "start": "2026-01-01"}, ctx)


async def test_range(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    assert await run_op("date_range", {"start": "2026-01-30", "end": "2026-02-01"}, ctx) == [
        "2026-01-30T00:00:00+00:00",
        "2026-01-31T00:00:00+00:00",
        "2026-02-01T00:00:00+00:00",
    ]
    months = await run_op("date_range", {"start": "2026-01-31", "step": "P1M", "count": 3}, ctx)
    assert months == ["2026-01-31T00:00:00+00:00", "2026-02-28T00:00:00+00:00", "2026-03-31T00:00:00+00:00"]
    back = await run_op(
        "date_range",
        {"step": "-PT30M", "end": "2026-01-01T09:00:00Z"},
        prev(tmp_path, "2026-01-01T10:00:00Z"),
    )
    assert back == ["2026-01-01T10:00:00+00:00", "2026-01-01T09:30:00+00:00", "2026-01-01T09:00:00+00:00"]
    assert await run_op("date_range", {"start": "2026-01-02", "end": "2026-01-01"}, ctx) == []


async def test_range_is_bounded(ctx: OpContext) -> None:
    with pytest.raises(ValidationError, match="give end, count or both"):
        await run_op("date_range", {"start": "2026-01-01"}, ctx)
    with pytest.raises(InvalidInputError, match="end: the range has more than 10000 items"):
        await run_op("date_range", {"start": "2026-01-01", "end": "2027-01-01", "step": "PT1M"}, ctx)
    with pytest.raises(InvalidInputError, match="step: must not be zero"):
        await run_op("date_range", {"start": "2026-01-01", "count": 3, "step": "PT0S"}, ctx)
    with pytest.raises(ValidationError, match="count"):
        await run_op("date_range", {"start": "2026-01-01", "count": 10_001}, ctx)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"seconds": 3725}, "1 hour, 2 minutes and 5 seconds"),
        ({"seconds": 3725, "style": "natural"}, "an hour"),
        ({"duration": "P1DT2H"}, "1 day and 2 hours"),
        ({"seconds": 90061, "minimum_unit": "hours"}, "1 day and 1 hour"),
        ({"seconds": -60}, "minus 1 minute"),
    ],
)
async def test_humanize_duration(ctx: OpContext, params: dict[str, Any], expected: str) -> None:
    assert await run_op("date_humanize_duration", params, ctx) == expected


async def test_humanize_refuses_calendar_lengths(ctx: OpContext) -> None:
    with pytest.raises(InvalidInputError, match="duration: years and months have no fixed length"):
        await run_op("date_humanize_duration", {"duration": "P1M"}, ctx)


async def test_durations_and_seconds(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    assert await run_op("date_duration_to_seconds", {"duration": "PT1H30M"}, ctx) == 5400
    assert await run_op("date_duration_to_seconds", {}, prev(tmp_path, "P1W")) == 604800
    assert await run_op("date_duration_to_seconds", {"duration": "PT0.5S"}, ctx) == 0.5
    feb = {"duration": "P1M", "relative_to": "2026-02-01"}
    assert await run_op("date_duration_to_seconds", feb, ctx) == 28 * 86400
    with pytest.raises(InvalidInputError, match="relative_to: needed to measure years and months"):
        await run_op("date_duration_to_seconds", {"duration": "P1Y"}, ctx)
    assert await run_op("date_duration_from_seconds", {"seconds": 5400}, ctx) == "PT1H30M"
    assert await run_op("date_duration_from_seconds", {}, prev(tmp_path, 90000)) == "P1DT1H"
    with pytest.raises(InvalidInputError, match="seconds: expected a number, got a string"):
        await run_op("date_duration_from_seconds", {}, prev(tmp_path, "90"))
