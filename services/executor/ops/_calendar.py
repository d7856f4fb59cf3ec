"""Date operations over calendars and schedules: business days, cron, date ranges, durations as text."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import Annotated, Literal

import humanize
import isodate
from croniter import CroniterError, croniter
from pydantic import Field, StringConstraints, model_validator

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops._datetimes import (
    DEFAULT_ZONE_FIELD,
    DateText,
    DurationText,
    Span,
    ZoneName,
    duration,
    iso,
    iso_day,
    out_of_range,
    parse,
    zone,
)
from services.executor.ops._numbers import FiniteNumber, kind
from services.executor.ops.base import Params, input_or_prev, operation

MAX_DATES = 10_000
"""The most datetimes a range or cron step returns."""
MAX_BUSINESS_SPAN = 366 * 200
"""Business-day walks stop after this many calendar days."""

IsoWeekday = Annotated[int, Field(ge=1, le=7)]


class BusinessParams(Params):
    value: DateText | None = Field(None, description="A date/time; the previous step's output when omitted.")
    holidays: list[Annotated[str, StringConstraints(max_length=10)]] = Field(
        default_factory=list, max_length=2000, description="Dates that are not business days, as YYYY-MM-DD."
    )
    weekend: list[IsoWeekday] = Field(
        default=[6, 7],
        max_length=6,
        description="ISO weekdays that are not business days (6 = Sat, 7 = Sun).",
    )
    default_zone: str = DEFAULT_ZONE_FIELD

    def closed(self) -> tuple[frozenset[date], frozenset[int]]:
        days = frozenset(iso_day(text, f"holidays[{i}]") for i, text in enumerate(self.holidays))
        return days, frozenset(self.weekend)


def _is_open(day: date, holidays: frozenset[date], weekend: frozenset[int]) -> bool:
    return day.isoweekday() not in weekend and day not in holidays


@operation("date_is_business_day", category="dates", params=BusinessParams)
async def date_is_business_day(p: BusinessParams, ctx: OpContext) -> bool:
    """Whether a date is a business day: not on the weekend days (Saturday and Sunday by default) and not
    in the holiday list."""
    value = parse(input_or_prev(p, "value", ctx), "value", p.default_zone)
    return _is_open(value.date(), *p.closed())


class AddBusinessParams(BusinessParams):
    days: int = Field(ge=-50_000, le=50_000, description="Business days to move (negative: backwards).")


@operation("date_add_business_days", category="dates", params=AddBusinessParams)
async def date_add_business_days(p: AddBusinessParams, ctx: OpContext) -> str:
    """Move a date/time by a number of business days, skipping weekends and holidays, keeping the time of
    day; 0 moves a closed day forward to the next business day."""
    value = parse(input_or_prev(p, "value", ctx), "value", p.default_zone)
    holidays, weekend = p.closed()
    step = -1 if p.days < 0 else 1
    left, day, walked = abs(p.days), value.date(), 0
    try:
        while left or not _is_open(day, holidays, weekend):
            day += timedelta(days=step)
            walked += 1
            if walked > MAX_BUSINESS_SPAN:
                raise InvalidInputError("days: no business day within 200 years", param="days")
            if _is_open(day, holidays, weekend) and left:
                left -= 1
    except OverflowError:
        raise out_of_range("days") from None
    return iso(value.replace(year=day.year, month=day.month, day=day.day))


class BetweenBusinessParams(BusinessParams):
    end: DateText = Field(description="The end date (exclusive).")


@operation("date_business_days_between", category="dates", params=BetweenBusinessParams)
async def date_business_days_between(p: BetweenBusinessParams, ctx: OpContext) -> int:
    """The number of business days from value (inclusive) to end (exclusive), by calendar date; negative
    when end is earlier."""
    first = parse(input_or_prev(p, "value", ctx), "value", p.default_zone)
    start = first.date()
    end = parse(p.end, "end", p.default_zone).astimezone(first.tzinfo).date()
    low, high, sign = (start, end, 1) if start <= end else (end, start, -1)
    if (high - low).days > MAX_BUSINESS_SPAN:
        raise InvalidInputError("end: at most 200 years from value", param="end")
    holidays, weekend = p.closed()
    days = (high - low).days
    return sign * sum(_is_open(low + timedelta(days=i), holidays, weekend) for i in range(days))


class CronParams(Params):
    expression: str = Field(
        min_length=1,
        max_length=120,
        description="A cron expression: 5 fields ('*/15 9-17 * * mon-fri'), "
        "an optional 6th for seconds, or @hourly/@daily/@weekly/@monthly/@yearly.",
    )
    start: DateText | None = Field(None, description="Runs after this date/time; now when omitted.")
    count: int = Field(5, ge=1, le=1000, description="How many run times to return.")
    zone: ZoneName = Field("UTC", description="IANA zone the schedule is read in (DST is followed).")


@operation("date_cron_next", category="dates", params=CronParams)
async def date_cron_next(p: CronParams, ctx: OpContext) -> list[str]:
    """The next run times of a cron schedule after a start (now by default), in the schedule's zone."""
    tz = zone(p.zone, "zone")
    start = parse(p.start, "start", p.zone).astimezone(tz) if p.start else datetime.now(tz)
    if not croniter.is_valid(p.expression):
        raise InvalidInputError(
            f"expression: {p.expression!r} is not a valid cron expression", param="expression"
        )

    def runs() -> list[str]:
        schedule = croniter(p.expression, start)
        return [iso(schedule.get_next(datetime)) for _ in range(p.count)]

    try:
        return await asyncio.to_thread(runs)
    except (CroniterError, ValueError, OverflowError) as exc:
        raise InvalidInputError(
            f"expression: {p.expression!r} has no further run times ({exc})", param="expression"
        ) from None


class RangeParams(Params):
    start: DateText | None = Field(
        None, description="The first date/time; the previous step's output when omitted."
    )
    end: DateText | None = Field(None, description="The last date/time allowed (inclusive).")
    count: int | None = Field(None, ge=1, le=MAX_DATES, description="How many date/times at most.")
    step: DurationText = Field(
        "P1D", description="ISO 8601 duration between items: 'P1D', 'PT15M', 'P1M', 'P1W'."
    )
    default_zone: str = DEFAULT_ZONE_FIELD

    @model_validator(mode="after")
    def _bounded(self) -> RangeParams:
        if self.end is None and self.count is None:
            raise ValueError("give end, count or both")
        return self


@operation("date_range", category="dates", params=RangeParams)
async def date_range(p: RangeParams, ctx: OpContext) -> list[str]:
    """Date/times from start by a step (an ISO 8601 duration, 1 day by default) up to end (inclusive) and/or
    count items; at most 10,000. Month steps count from start, so Jan 31 + P1M gives Feb 28, Mar 31..."""
    start = parse(input_or_prev(p, "start", ctx), "start", p.default_zone)
    end = parse(p.end, "end", p.default_zone) if p.end else None
    span = duration(p.step, "step")
    if span.is_zero:
        raise InvalidInputError("step: must not be zero", param="step")
    forward = span.apply(start) > start
    limit = p.count or MAX_DATES
    out: list[str] = []
    for n in range(limit):
        try:
            # Multiples of the step from start, so month ends do not drift (Jan 31, Feb 28, Mar 31).
            current = Span(span.calendar * n, span.exact * n).apply(start)
        except (ValueError, OverflowError):
            return out  # past year 9999 (or before year 1): nothing further exists
        if end is not None and (current > end if forward else current < end):
            return out
        out.append(iso(current))
    if p.count is None and end is not None:
        try:
            following = Span(span.calendar * limit, span.exact * limit).apply(start)
        except (ValueError, OverflowError):
            return out
        if following <= end if forward else following >= end:
            raise InvalidInputError(
                f"end: the range has more than {MAX_DATES} items; use a larger step or set count", param="end"
            )
    return out


class HumanizeParams(Params):
    seconds: FiniteNumber | None = Field(
        None, description="A duration in seconds; the previous step's output when nothing else is given."
    )
    duration: DurationText | None = Field(None, description="Or an ISO 8601 duration without years/months.")
    style: Literal["precise", "natural"] = Field(
        "precise", description="precise: '1 hour, 2 minutes and 5 seconds'; natural: 'an hour'."
    )
    minimum_unit: Literal["microseconds", "milliseconds", "seconds", "minutes", "hours", "days"] = Field(
        "seconds", description="Smallest unit shown by the precise style."
    )


@operation("date_humanize_duration", category="dates", params=HumanizeParams)
async def date_humanize_duration(p: HumanizeParams, ctx: OpContext) -> str:
    """A duration as English words, precise ('1 hour, 2 minutes and 5 seconds') or natural ('an hour');
    from seconds or an ISO 8601 duration."""
    if p.duration is not None:
        span = duration(p.duration, "duration")
        if span.calendar.years or span.calendar.months:
            raise InvalidInputError("duration: years and months have no fixed length here", param="duration")
        delta = timedelta(days=span.calendar.days) + span.exact
    else:
        raw = input_or_prev(p, "seconds", ctx)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise InvalidInputError(f"seconds: expected a number, got {kind(raw)}", param="seconds")
        try:
            delta = timedelta(seconds=raw)
        except OverflowError:
            raise InvalidInputError("seconds: too large for a duration", param="seconds") from None
    sign = "minus " if delta < timedelta(0) else ""
    if p.style == "natural":
        return sign + humanize.naturaldelta(abs(delta))
    return sign + humanize.precisedelta(abs(delta), minimum_unit=p.minimum_unit, format="%0.0f")


class DurationSecondsParams(Params):
    duration: DurationText | None = Field(
        None, description="An ISO 8601 duration; the previous step's output when omitted."
    )
    relative_to: DateText | None = Field(
        None, description="Start date/time that gives years and months a length (needed only for those)."
    )
    default_zone: str = DEFAULT_ZONE_FIELD


@operation("date_duration_to_seconds", category="dates", params=DurationSecondsParams)
async def date_duration_to_seconds(p: DurationSecondsParams, ctx: OpContext) -> int | float:
    """The length in seconds of an ISO 8601 duration ('PT1H30M' -> 5400); years and months are measured
    from relative_to."""
    text = input_or_prev(p, "duration", ctx)
    if not isinstance(text, str):
        raise InvalidInputError(
            f"duration: expected an ISO 8601 duration string, got {kind(text)}", param="duration"
        )
    span = duration(text, "duration")
    if p.relative_to is not None:
        start = parse(p.relative_to, "relative_to", p.default_zone)
        try:
            seconds = (span.apply(start) - start).total_seconds()
        except (ValueError, OverflowError):
            raise out_of_range("duration") from None
    elif span.calendar.years or span.calendar.months:
        raise InvalidInputError("relative_to: needed to measure years and months", param="relative_to")
    else:
        seconds = (timedelta(days=span.calendar.days) + span.exact).total_seconds()
    return int(seconds) if seconds.is_integer() else seconds


class SecondsDurationParams(Params):
    seconds: FiniteNumber | None = Field(
        None, ge=-1e15, le=1e15, description="A number of seconds; the previous step's output when omitted."
    )


@operation("date_duration_from_seconds", category="dates", params=SecondsDurationParams)
async def date_duration_from_seconds(p: SecondsDurationParams, ctx: OpContext) -> str:
    """A number of seconds as an ISO 8601 duration (5400 -> 'PT1H30M', 90000 -> 'P1DT1H')."""
    raw = input_or_prev(p, "seconds", ctx)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidInputError(f"seconds: expected a number, got {kind(raw)}", param="seconds")
    try:
        delta = timedelta(seconds=raw)
    except OverflowError:
        raise InvalidInputError("seconds: too large for a duration", param="seconds") from None
    return str(isodate.duration_isoformat(delta))


OPERATIONS = (
    date_is_business_day,
    date_add_business_days,
    date_business_days_between,
    date_cron_next,
    date_range,
    date_humanize_duration,
    date_duration_to_seconds,
    date_duration_from_seconds,
)
