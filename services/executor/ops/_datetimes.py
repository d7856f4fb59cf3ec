"""Reading time zones, datetimes and ISO 8601 durations for the date operations, with errors that name the param."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import parser as dateparser
from dateutil.relativedelta import relativedelta
from pydantic import Field, StringConstraints

from services.common.errors import InvalidInputError
from services.executor.ops._numbers import kind

DateText = Annotated[str, StringConstraints(min_length=1, max_length=100)]
ZoneName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
DurationText = Annotated[str, StringConstraints(min_length=2, max_length=64)]

DEFAULT_ZONE_FIELD: Any = Field(
    "UTC", min_length=1, max_length=64, description="IANA zone given to inputs without an offset (naive)."
)


def zone(name: str, param: str) -> tzinfo:
    """The IANA time zone ``name`` ('UTC', 'Europe/Paris'...), or an error naming ``param``."""
    if name.upper() in {"UTC", "Z"}:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInputError(
            f"{param}: unknown time zone {name!r} (use an IANA name like 'Europe/Paris')", param=param
        ) from None


def parse(
    value: Any, param: str, default_zone: str, *, dayfirst: bool = False, yearfirst: bool = False
) -> datetime:
    """An aware datetime from ISO 8601 or common formats; naive input takes ``default_zone``."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{param}: expected a date/time string, got {kind(value)}", param=param)
    if len(value) > 100:
        raise InvalidInputError(f"{param}: a date/time is at most 100 characters", param=param)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        try:
            parsed = dateparser.parse(value, dayfirst=dayfirst, yearfirst=yearfirst)
        except (ValueError, OverflowError):
            raise InvalidInputError(f"{param}: cannot read {value!r} as a date/time", param=param) from None
    return aware(parsed, default_zone)


def aware(value: datetime, default_zone: str, param: str = "default_zone") -> datetime:
    """``value`` itself if it carries an offset, else the same wall time in ``default_zone``."""
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=zone(default_zone, param))
    return value


def iso(value: datetime) -> str:
    """The ISO 8601 text of an aware datetime (microseconds only when there are some)."""
    return value.isoformat()


def iso_day(value: Any, param: str) -> date:
    """A calendar date from 'YYYY-MM-DD'."""
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{param}: {value!r} is not a date (YYYY-MM-DD)", param=param) from None


@dataclass(frozen=True)
class Span:
    """A duration split the way people mean it: calendar parts on the wall clock, the rest in elapsed time."""

    calendar: relativedelta
    exact: timedelta

    def negated(self) -> Span:
        return Span(-self.calendar, -self.exact)

    def apply(self, value: datetime) -> datetime:
        """``value`` moved by this span: P1D keeps the wall-clock time across DST, PT24H is 24 elapsed hours."""
        moved = value + self.calendar
        if self.exact:
            moved = (moved.astimezone(UTC) + self.exact).astimezone(moved.tzinfo)
        return moved

    @property
    def is_zero(self) -> bool:
        return not self.calendar and not self.exact


_NUM = r"\d{1,12}(?:[.,]\d{1,9})?"
_DURATION = re.compile(
    rf"(?P<sign>[-+])?P(?:(?P<years>{_NUM})Y)?(?:(?P<months>{_NUM})M)?(?:(?P<weeks>{_NUM})W)?(?:(?P<days>{_NUM})D)?"
    rf"(?:T(?:(?P<hours>{_NUM})H)?(?:(?P<minutes>{_NUM})M)?(?:(?P<seconds>{_NUM})S)?)?"
)
_CALENDAR = ("years", "months", "weeks", "days")


def duration(text: str, param: str) -> Span:
    """An ISO 8601 duration ('P1DT2H', 'P1M', '-PT30M', 'P2W') as a Span: PT24H stays 24 elapsed hours."""
    match = _DURATION.fullmatch(text.strip().upper())
    if (
        match is None
        or not any(match[name] for name in (*_CALENDAR, "hours", "minutes", "seconds"))
        or (text.strip().upper().endswith("T"))
    ):
        raise InvalidInputError(f"{param}: {text!r} is not an ISO 8601 duration like P1DT2H", param=param)
    values = {
        name: float((match[name] or "0").replace(",", ".")) for name in match.groupdict() if name != "sign"
    }
    for name in _CALENDAR:
        if not values[name].is_integer():
            raise InvalidInputError(f"{param}: fractional {name} are ambiguous in {text!r}", param=param)
    sign = -1 if match["sign"] == "-" else 1
    try:
        calendar = relativedelta(
            years=sign * int(values["years"]),
            months=sign * int(values["months"]),
            weeks=sign * int(values["weeks"]),
            days=sign * int(values["days"]),
        )
        exact = sign * timedelta(hours=values["hours"], minutes=values["minutes"], seconds=values["seconds"])
    except (ValueError, OverflowError):
        raise InvalidInputError(f"{param}: {text!r} is too long a duration", param=param) from None
    return Span(calendar, exact)


def out_of_range(param: str) -> InvalidInputError:
    """The error for a result outside years 1..9999."""
    return InvalidInputError(f"{param}: the result is outside the years 1..9999", param=param)
