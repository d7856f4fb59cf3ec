"""Date and time operations: parse, format, add, diff and time zones.

Every datetime an operation returns is timezone-aware ISO 8601 text; naive inputs take the step's
``default_zone`` (UTC unless set). Business days, cron, ranges and durations live in ``_calendar``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Literal

from dateutil.relativedelta import relativedelta
from pydantic import Field, model_validator

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops import _calendar
from services.executor.ops._datetimes import (
    DEFAULT_ZONE_FIELD,
    DateText,
    DurationText,
    Span,
    ZoneName,
    aware,
    duration,
    iso,
    out_of_range,
    parse,
    zone,
)
from services.executor.ops._numbers import FiniteNumber
from services.executor.ops.base import Params, input_or_prev, operation

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class NowParams(Params):
    zone: ZoneName = Field("UTC", description="IANA time zone of the result, e.g. 'Europe/Paris'.")


@operation("date_now", category="dates", params=NowParams)
async def date_now(p: NowParams, ctx: OpContext) -> str:
    """The current date and time in a zone (UTC by default), as ISO 8601 text with its offset."""
    return iso(datetime.now(zone(p.zone, "zone")))


class ValueParams(Params):
    value: DateText | None = Field(None, description="A date/time; the previous step's output when omitted.")
    default_zone: str = DEFAULT_ZONE_FIELD


def _value(p: ValueParams, ctx: OpContext) -> datetime:
    return parse(input_or_prev(p, "value", ctx), "value", p.default_zone)


class ParseParams(Params):
    text: DateText | None = Field(
        None, description="The text to read; the previous step's output when omitted."
    )
    format: str | None = Field(
        None, min_length=1, max_length=200, description="An explicit strptime format, e.g. '%d/%m/%Y %H:%M'."
    )
    dayfirst: bool = Field(False, description="Read 01/02/2026 as 1 February (without a format).")
    yearfirst: bool = Field(False, description="Read 26/01/02 as 2026-01-02 (without a format).")
    default_zone: str = DEFAULT_ZONE_FIELD
    zone: ZoneName | None = Field(None, description="Convert the result to this zone.")


@operation("date_parse", category="dates", params=ParseParams)
async def date_parse(p: ParseParams, ctx: OpContext) -> str:
    """Read a date/time (ISO 8601, common formats like '25 Nov 2026 10:30', or an explicit strptime format)
    and return it as ISO 8601 with an offset."""
    text = input_or_prev(p, "text", ctx)
    if p.format is None:
        value = parse(text, "text", p.default_zone, dayfirst=p.dayfirst, yearfirst=p.yearfirst)
    else:
        if not isinstance(text, str):
            raise InvalidInputError("text: expected a date/time string", param="text")
        try:
            value = aware(datetime.strptime(text.strip(), p.format), p.default_zone)
        except ValueError as exc:
            raise InvalidInputError(
                f"text: {text!r} does not match format {p.format!r}: {exc}", param="text"
            ) from None
    return iso(value.astimezone(zone(p.zone, "zone")) if p.zone else value)


class FormatParams(ValueParams):
    format: str = Field(
        "iso",
        min_length=1,
        max_length=200,
        description="'iso', 'date' (YYYY-MM-DD), 'time', 'rfc2822', or a strftime pattern like '%A %d %B %Y'.",
    )
    zone: ZoneName | None = Field(None, description="Convert to this zone before formatting.")


@operation("date_format", category="dates", params=FormatParams)
async def date_format(p: FormatParams, ctx: OpContext) -> str:
    """Format a date/time as text: ISO 8601, date only, time only, RFC 2822 (e-mail) or a strftime pattern."""
    value = _value(p, ctx)
    if p.zone:
        value = value.astimezone(zone(p.zone, "zone"))
    if p.format == "iso":
        return iso(value)
    if p.format == "date":
        return value.date().isoformat()
    if p.format == "time":
        return value.timetz().isoformat()
    if p.format == "rfc2822":
        return format_datetime(value)
    try:
        return value.strftime(p.format)
    except ValueError as exc:
        raise InvalidInputError(f"format: {exc}", param="format") from None


class ShiftParams(ValueParams):
    duration: DurationText | None = Field(
        None, description="An ISO 8601 duration: 'P1DT2H', 'P1M', 'PT90M', 'P2W'."
    )
    years: int = Field(0, ge=-9999, le=9999, description="Calendar years.")
    months: int = Field(0, ge=-120_000, le=120_000, description="Calendar months (month ends are clamped).")
    weeks: int = Field(0, ge=-530_000, le=530_000, description="Calendar weeks.")
    days: int = Field(
        0, ge=-3_700_000, le=3_700_000, description="Calendar days (wall-clock time kept across DST)."
    )
    hours: FiniteNumber = Field(0, ge=-1e8, le=1e8, description="Elapsed hours.")
    minutes: FiniteNumber = Field(0, ge=-1e10, le=1e10, description="Elapsed minutes.")
    seconds: FiniteNumber = Field(0, ge=-1e12, le=1e12, description="Elapsed seconds.")

    def span(self) -> Span:
        fields = relativedelta(years=self.years, months=self.months, weeks=self.weeks, days=self.days)
        exact = timedelta(hours=self.hours, minutes=self.minutes, seconds=self.seconds)
        return Span(fields, exact)

    @model_validator(mode="after")
    def _something(self) -> ShiftParams:
        if self.duration is None and self.span().is_zero:
            raise ValueError(
                "give a duration or at least one of years, months, weeks, days, hours, minutes, seconds"
            )
        return self


def _shift(p: ShiftParams, ctx: OpContext, sign: int) -> str:
    value = _value(p, ctx)
    span = p.span()
    total = [span] + ([duration(p.duration, "duration")] if p.duration else [])
    try:
        for part in total:
            value = (part if sign > 0 else part.negated()).apply(value)
    except (ValueError, OverflowError):
        raise out_of_range("value") from None
    return iso(value)


@operation("date_add", category="dates", params=ShiftParams)
async def date_add(p: ShiftParams, ctx: OpContext) -> str:
    """Add an ISO 8601 duration and/or fields to a date/time: years, months, weeks and days on the calendar
    (wall clock kept across DST, month ends clamped), hours/minutes/seconds as elapsed time."""
    return _shift(p, ctx, 1)


@operation("date_subtract", category="dates", params=ShiftParams)
async def date_subtract(p: ShiftParams, ctx: OpContext) -> str:
    """Subtract an ISO 8601 duration and/or fields from a date/time (the same rules as date_add)."""
    return _shift(p, ctx, -1)


DiffUnit = Literal["seconds", "minutes", "hours", "days", "weeks", "months", "years"]
_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800}


class DiffParams(Params):
    start: DateText = Field(description="The earlier date/time.")
    end: DateText | None = Field(
        None, description="The later date/time; the previous step's output when omitted."
    )
    unit: DiffUnit = Field("seconds", description="Unit of the result.")
    default_zone: str = DEFAULT_ZONE_FIELD


@operation("date_diff", category="dates", params=DiffParams)
async def date_diff(p: DiffParams, ctx: OpContext) -> float | int:
    """end - start in a unit: elapsed seconds/minutes/hours/days/weeks (may be fractional, negative if end is
    earlier) or whole calendar months/years (truncated toward zero)."""
    start = parse(p.start, "start", p.default_zone)
    end = parse(input_or_prev(p, "end", ctx), "end", p.default_zone)
    if p.unit in ("months", "years"):
        delta = relativedelta(end.astimezone(start.tzinfo), start)
        months = delta.years * 12 + delta.months
        return months if p.unit == "months" else int(months / 12)
    seconds = (end - start).total_seconds()
    result = seconds / _SECONDS[p.unit]
    return int(result) if result.is_integer() else result


class ConvertParams(ValueParams):
    to_zone: ZoneName = Field(description="IANA zone to express the date/time in, e.g. 'America/New_York'.")


@operation("date_convert_zone", category="dates", params=ConvertParams)
async def date_convert_zone(p: ConvertParams, ctx: OpContext) -> str:
    """Express a date/time in another time zone (the same instant, a new wall-clock time and offset)."""
    return iso(_value(p, ctx).astimezone(zone(p.to_zone, "to_zone")))


BoundaryUnit = Literal["minute", "hour", "day", "week", "month", "quarter", "year"]


class BoundaryParams(ValueParams):
    unit: BoundaryUnit = Field("day", description="The calendar period.")
    week_start: Literal["monday", "sunday"] = Field("monday", description="First day of a week.")
    zone: ZoneName | None = Field(None, description="Whose calendar: the value's own zone when omitted.")


def _start_of(value: datetime, unit: str, week_start: str) -> datetime:
    if unit == "minute":
        return value.replace(second=0, microsecond=0)
    if unit == "hour":
        return value.replace(minute=0, second=0, microsecond=0)
    day = value.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return day
    if unit == "week":
        back = value.weekday() if week_start == "monday" else (value.weekday() + 1) % 7
        return day - timedelta(days=back)
    if unit == "month":
        return day.replace(day=1)
    if unit == "quarter":
        return day.replace(day=1, month=(value.month - 1) // 3 * 3 + 1)
    return day.replace(day=1, month=1)


_NEXT = {
    "minute": relativedelta(minutes=1),
    "hour": relativedelta(hours=1),
    "day": relativedelta(days=1),
    "week": relativedelta(weeks=1),
    "month": relativedelta(months=1),
    "quarter": relativedelta(months=3),
    "year": relativedelta(years=1),
}


def _local(p: BoundaryParams, ctx: OpContext) -> datetime:
    value = _value(p, ctx)
    return value.astimezone(zone(p.zone, "zone")) if p.zone else value


@operation("date_start_of", category="dates", params=BoundaryParams)
async def date_start_of(p: BoundaryParams, ctx: OpContext) -> str:
    """The first instant of the minute/hour/day/week/month/quarter/year containing a date/time."""
    return iso(_fold(_start_of(_local(p, ctx), p.unit, p.week_start)))


@operation("date_end_of", category="dates", params=BoundaryParams)
async def date_end_of(p: BoundaryParams, ctx: OpContext) -> str:
    """The last microsecond of the minute/hour/day/week/month/quarter/year containing a date/time."""
    start = _start_of(_local(p, ctx), p.unit, p.week_start)
    try:
        return iso(_fold(start + _NEXT[p.unit] - timedelta(microseconds=1)))
    except (ValueError, OverflowError):
        raise out_of_range("value") from None


def _fold(value: datetime) -> datetime:
    """A wall time that falls in a DST gap moves to the same instant's real wall time."""
    return value.astimezone(UTC).astimezone(value.tzinfo)


@operation("date_weekday", category="dates", params=ValueParams)
async def date_weekday(p: ValueParams, ctx: OpContext) -> str:
    """The English name of the day of the week of a date/time, e.g. 'Wednesday'."""
    return WEEKDAYS[_value(p, ctx).weekday()]


@operation("date_parts", category="dates", params=ValueParams)
async def date_parts(p: ValueParams, ctx: OpContext) -> dict[str, Any]:
    """The components of a date/time: year, month, day, hour, minute, second, microsecond, weekday (name),
    iso_weekday (1 = Monday), iso_week, iso_year, day_of_year, quarter, zone and utc_offset_seconds."""
    value = _value(p, ctx)
    iso_year, iso_week, iso_weekday = value.isocalendar()
    offset = value.utcoffset() or timedelta(0)
    return {
        "year": value.year,
        "month": value.month,
        "day": value.day,
        "hour": value.hour,
        "minute": value.minute,
        "second": value.second,
        "microsecond": value.microsecond,
        "weekday": WEEKDAYS[value.weekday()],
        "iso_weekday": iso_weekday,
        "iso_week": iso_week,
        "iso_year": iso_year,
        "day_of_year": value.timetuple().tm_yday,
        "quarter": (value.month - 1) // 3 + 1,
        "zone": str(value.tzinfo),
        "utc_offset_seconds": int(offset.total_seconds()),
    }


UnixUnit = Literal["s", "ms", "us", "ns"]
_PER_SECOND = {"s": 1, "ms": 1000, "us": 1_000_000, "ns": 1_000_000_000}


class FromUnixParams(Params):
    timestamp: FiniteNumber | None = Field(
        None, description="Time since 1970-01-01T00:00:00Z; the previous step's output when omitted."
    )
    unit: UnixUnit = Field("s", description="Unit of the timestamp: s, ms, us or ns.")
    zone: ZoneName = Field("UTC", description="IANA zone of the result.")


@operation("date_from_unix", category="dates", params=FromUnixParams)
async def date_from_unix(p: FromUnixParams, ctx: OpContext) -> str:
    """A Unix timestamp (seconds, or ms/us/ns) as an ISO 8601 date/time in a zone (UTC by default)."""
    raw = input_or_prev(p, "timestamp", ctx)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidInputError("timestamp: expected a number", param="timestamp")
    per = _PER_SECOND[p.unit]
    try:
        if isinstance(raw, int):  # exact: an ns timestamp does not fit a float's 53 bits
            whole, rest = divmod(raw, per)
            delta = timedelta(seconds=whole, microseconds=rest * 1_000_000 // per)
        else:
            delta = timedelta(seconds=raw / per)
        return iso((EPOCH + delta).astimezone(zone(p.zone, "zone")))
    except (ValueError, OverflowError):
        raise InvalidInputError(f"timestamp: {raw} is outside the years 1..9999", param="timestamp") from None


class ToUnixParams(ValueParams):
    unit: UnixUnit = Field("s", description="Unit of the result: s, ms, us or ns.")


@operation("date_to_unix", category="dates", params=ToUnixParams)
async def date_to_unix(p: ToUnixParams, ctx: OpContext) -> int | float:
    """A date/time as a Unix timestamp in s, ms, us or ns (an integer unless seconds have a fraction)."""
    delta = _value(p, ctx) - EPOCH
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    if p.unit == "s":
        return micros // 1_000_000 if micros % 1_000_000 == 0 else micros / 1_000_000
    return micros * _PER_SECOND[p.unit] // 1_000_000


OPERATIONS = (
    date_now,
    date_parse,
    date_format,
    date_add,
    date_subtract,
    date_diff,
    date_convert_zone,
    date_start_of,
    date_end_of,
    date_weekday,
    date_parts,
    date_from_unix,
    date_to_unix,
    *_calendar.OPERATIONS,
)
