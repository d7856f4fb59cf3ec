"""Statistics operations over lists of numbers (the standard library's statistics module, made strict)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, StrictBool, StrictStr, model_validator

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops._numbers import (
    MAX_ITEMS,
    FiniteNumber,
    ItemsParams,
    Number,
    NumberList,
    crunch,
    finite,
    kind,
    numbers,
)
from services.executor.ops.base import Params, input_or_prev, operation

T = TypeVar("T")


async def _stat(fn: Callable[[], T], size: int, param: str = "items") -> T:
    """Run a statistics computation, turning the library's StatisticsError into a clear input error."""
    try:
        return await crunch(fn, size)
    except statistics.StatisticsError as exc:
        raise InvalidInputError(f"{param}: {exc}", param=param) from None
    except OverflowError:
        raise InvalidInputError(
            f"{param}: the numbers are too large for this statistic", param=param
        ) from None


def _out(value: Any, what: str) -> Number:
    """A statistic as a JSON number (Fractions and Decimals never leak out)."""
    return finite(value if isinstance(value, int) else float(value), what, "items")


class SpreadParams(ItemsParams):
    population: bool = Field(
        False, description="Population statistic (divide by n) instead of the sample one (n - 1)."
    )


@operation("stats_describe", category="statistics", params=ItemsParams)
async def stats_describe(p: ItemsParams, ctx: OpContext) -> dict[str, Number | None]:
    """Summary statistics of a list: count, sum, mean, median, min, max, range, sample stdev and variance
    (null with fewer than 2 numbers), and the quartiles q1 and q3."""
    items = numbers(input_or_prev(p, "items", ctx), "items")

    def compute() -> dict[str, Number | None]:
        several = len(items) > 1
        q1, _, q3 = statistics.quantiles(items, n=4, method="inclusive") if several else (items[0],) * 3
        return {
            "count": len(items),
            "sum": _out(math.fsum(items) if any(isinstance(x, float) for x in items) else sum(items), "sum"),
            "mean": _out(statistics.fmean(items), "mean"),
            "median": _out(statistics.median(items), "median"),
            "min": min(items),
            "max": max(items),
            "range": _out(max(items) - min(items), "range"),
            "stdev": _out(statistics.stdev(items), "stdev") if several else None,
            "variance": _out(statistics.variance(items), "variance") if several else None,
            "q1": _out(q1, "q1"),
            "q3": _out(q3, "q3"),
        }

    return await _stat(compute, len(items))


class MeanParams(ItemsParams):
    kind: Literal["arithmetic", "geometric", "harmonic"] = Field("arithmetic", description="Which mean.")
    weights: NumberList | None = Field(
        None, description="Optional weights, one per item (arithmetic and harmonic means)."
    )


@operation("stats_mean", category="statistics", params=MeanParams)
async def stats_mean(p: MeanParams, ctx: OpContext) -> Number:
    """The arithmetic (optionally weighted), geometric or harmonic mean of a list of numbers."""
    items = numbers(input_or_prev(p, "items", ctx), "items")
    weights = p.weights
    if weights is not None:
        if p.kind == "geometric":
            raise InvalidInputError("weights: not supported for the geometric mean", param="weights")
        if len(weights) != len(items):
            raise InvalidInputError(
                f"weights: {len(weights)} weights for {len(items)} items", param="weights"
            )
        if any(w < 0 for w in weights) or not any(weights):
            raise InvalidInputError("weights: must be non-negative and not all zero", param="weights")

    def compute() -> Number:
        if p.kind == "geometric":
            if any(x <= 0 for x in items):
                raise InvalidInputError("items: the geometric mean needs positive numbers", param="items")
            return statistics.geometric_mean(items)
        if p.kind == "harmonic":
            if any(x < 0 for x in items):
                raise InvalidInputError("items: the harmonic mean needs non-negative numbers", param="items")
            return statistics.harmonic_mean(items, weights)
        if weights is not None:
            return math.fsum(x * w for x, w in zip(items, weights, strict=True)) / math.fsum(weights)
        return statistics.fmean(items)

    return _out(await _stat(compute, len(items)), "mean")


class MedianParams(ItemsParams):
    kind: Literal["middle", "low", "high"] = Field(
        "middle",
        description="With an even count: the mean of the two middle values, or the lower/higher one.",
    )


@operation("stats_median", category="statistics", params=MedianParams)
async def stats_median(p: MedianParams, ctx: OpContext) -> Number:
    """The median of a list of numbers (middle, low or high for even counts)."""
    items = numbers(input_or_prev(p, "items", ctx), "items")

    def compute() -> Any:
        if p.kind == "low":
            return statistics.median_low(items)
        if p.kind == "high":
            return statistics.median_high(items)
        return statistics.median(items)

    return _out(await _stat(compute, len(items)), "median")


Scalar = StrictStr | FiniteNumber | StrictBool


class ModeParams(Params):
    items: Annotated[list[Scalar], Field(max_length=MAX_ITEMS)] | None = Field(
        None, description="Numbers or strings; the previous step's output when omitted."
    )


@operation("stats_mode", category="statistics", params=ModeParams)
async def stats_mode(p: ModeParams, ctx: OpContext) -> list[Any]:
    """The most frequent values of a list (numbers or strings), all of them when tied, in first-seen order."""
    items = input_or_prev(p, "items", ctx)
    if not isinstance(items, list) or not items:
        raise InvalidInputError(f"items: expected a non-empty list, got {kind(items)}", param="items")
    for index, item in enumerate(items):
        if isinstance(item, list | dict) or item is None:
            raise InvalidInputError(
                f"items[{index}]: expected a number or string, got {kind(item)}", param="items"
            )
    return await _stat(lambda: statistics.multimode(items), len(items))


@operation("stats_stdev", category="statistics", params=SpreadParams)
async def stats_stdev(p: SpreadParams, ctx: OpContext) -> Number:
    """The standard deviation of a list of numbers (sample by default, population on request)."""
    items = numbers(input_or_prev(p, "items", ctx), "items", at_least=1 if p.population else 2)
    fn = statistics.pstdev if p.population else statistics.stdev
    return _out(await _stat(lambda: fn(items), len(items)), "stdev")


@operation("stats_variance", category="statistics", params=SpreadParams)
async def stats_variance(p: SpreadParams, ctx: OpContext) -> Number:
    """The variance of a list of numbers (sample by default, population on request)."""
    items = numbers(input_or_prev(p, "items", ctx), "items", at_least=1 if p.population else 2)
    fn = statistics.pvariance if p.population else statistics.variance
    return _out(await _stat(lambda: fn(items), len(items)), "variance")


class QuantilesParams(ItemsParams):
    n: int = Field(
        4, ge=2, le=100, description="Number of groups: 4 gives quartiles, 10 deciles, 100 percentiles."
    )
    method: Literal["exclusive", "inclusive"] = Field(
        "exclusive",
        description="exclusive for a sample of a larger population, inclusive for the whole of it.",
    )


@operation("stats_quantiles", category="statistics", params=QuantilesParams)
async def stats_quantiles(p: QuantilesParams, ctx: OpContext) -> list[Number]:
    """The n - 1 cut points dividing a list of numbers into n equal-probability groups (quartiles by default)."""
    items = numbers(input_or_prev(p, "items", ctx), "items", at_least=2)
    cuts = await _stat(lambda: statistics.quantiles(items, n=p.n, method=p.method), len(items))
    return [_out(cut, "quantile") for cut in cuts]


class PercentileParams(ItemsParams):
    percentiles: list[Annotated[float, Field(ge=0, le=100)]] = Field(
        min_length=1, max_length=100, description="Percentiles to compute, each 0..100 (e.g. [50, 90, 99])."
    )


def _percentile(ordered: Sequence[Number], pct: float) -> float:
    # Linear interpolation between closest ranks (numpy's default, Excel's PERCENTILE.INC).
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@operation("stats_percentile", category="statistics", params=PercentileParams)
async def stats_percentile(p: PercentileParams, ctx: OpContext) -> list[Number]:
    """The requested percentiles of a list of numbers, by linear interpolation (as numpy and PERCENTILE.INC);
    one result per requested percentile, in order."""
    items = numbers(input_or_prev(p, "items", ctx), "items")
    ordered = await crunch(lambda: sorted(items), len(items))
    return [_out(_percentile(ordered, pct), "percentile") for pct in p.percentiles]


class HistogramParams(ItemsParams):
    bins: int = Field(
        10, ge=1, le=1000, description="Number of equal-width bins (ignored when edges are given)."
    )
    edges: NumberList | None = Field(
        None, min_length=2, max_length=1001, description="Explicit, strictly increasing bin edges."
    )

    @model_validator(mode="after")
    def _increasing(self) -> HistogramParams:
        if self.edges is not None and any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly increasing")
        return self


@operation("stats_histogram", category="statistics", params=HistogramParams)
async def stats_histogram(p: HistogramParams, ctx: OpContext) -> dict[str, Any]:
    """Count numbers into bins: {bins: [{start, end, count}], below, above}; each bin holds start <= x < end,
    the last also its end; numbers outside explicit edges are counted in below/above."""
    items = numbers(input_or_prev(p, "items", ctx), "items")
    if p.edges is not None:
        edges: list[Number] = list(p.edges)
    else:
        low, high = min(items), max(items)
        if low == high:
            low, high = low - 0.5, high + 0.5
        width = (high - low) / p.bins
        edges = [low + width * i for i in range(p.bins)] + [high]

    def compute() -> dict[str, Any]:
        import bisect

        counts = [0] * (len(edges) - 1)
        below = above = 0
        for x in items:
            if x < edges[0]:
                below += 1
            elif x > edges[-1]:
                above += 1
            else:
                counts[min(bisect.bisect_right(edges, x) - 1, len(counts) - 1)] += 1
        bins = [{"start": edges[i], "end": edges[i + 1], "count": c} for i, c in enumerate(counts)]
        return {"bins": bins, "below": below, "above": above}

    return await _stat(compute, len(items))


class ZScoreParams(ItemsParams):
    population: bool = Field(True, description="Use the population stdev (as scipy's zscore); false: sample.")


@operation("stats_zscores", category="statistics", params=ZScoreParams)
async def stats_zscores(p: ZScoreParams, ctx: OpContext) -> list[float]:
    """How many standard deviations each number lies from the mean, in input order."""
    items = numbers(input_or_prev(p, "items", ctx), "items", at_least=2)

    def compute() -> list[float]:
        mean = statistics.fmean(items)
        stdev = statistics.pstdev(items) if p.population else statistics.stdev(items)
        if stdev == 0:
            raise InvalidInputError("items: all numbers are equal, so z-scores are undefined", param="items")
        return [(x - mean) / stdev for x in items]

    return await _stat(compute, len(items))


class PairParams(Params):
    x: NumberList = Field(min_length=2, description="The first variable's values.")
    y: NumberList = Field(min_length=2, description="The second variable's values, paired with x.")

    @model_validator(mode="after")
    def _paired(self) -> PairParams:
        if len(self.x) != len(self.y):
            raise ValueError(f"x and y must have the same length ({len(self.x)} != {len(self.y)})")
        return self


class CorrelationParams(PairParams):
    method: Literal["pearson", "spearman"] = Field(
        "pearson", description="pearson (linear) or spearman (rank, for monotonic relationships)."
    )


def _ranks(values: Sequence[Number]) -> list[float]:
    """Ranks starting at 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in range(start, end + 1):
            ranks[order[i]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


@operation("stats_correlation", category="statistics", params=CorrelationParams)
async def stats_correlation(p: CorrelationParams, ctx: OpContext) -> float:
    """The correlation coefficient of two paired lists, from -1 to 1 (Pearson or Spearman)."""

    def compute() -> float:
        x, y = (_ranks(p.x), _ranks(p.y)) if p.method == "spearman" else (p.x, p.y)
        return statistics.correlation(x, y)

    return float(_out(await _stat(compute, len(p.x), param="x"), "correlation"))


class RegressionParams(PairParams):
    proportional: bool = Field(False, description="Fit a line through the origin (intercept 0).")
    predict: NumberList | None = Field(
        None, max_length=10_000, description="x values to predict y for with the fitted line."
    )


@operation("stats_linear_regression", category="statistics", params=RegressionParams)
async def stats_linear_regression(p: RegressionParams, ctx: OpContext) -> dict[str, Any]:
    """Least-squares line y = slope * x + intercept through paired lists: {slope, intercept, r_squared,
    predictions} (predictions for the optional predict values)."""

    def compute() -> dict[str, Any]:
        fit = statistics.linear_regression(p.x, p.y, proportional=p.proportional)
        predicted = [fit.slope * x + fit.intercept for x in p.x]
        mean_y = statistics.fmean(p.y)
        total = math.fsum((y - mean_y) ** 2 for y in p.y)
        residual = math.fsum((y - f) ** 2 for y, f in zip(p.y, predicted, strict=True))
        return {
            "slope": _out(fit.slope, "slope"),
            "intercept": _out(fit.intercept, "intercept"),
            "r_squared": _out(1 - residual / total, "r_squared") if total else None,
            "predictions": [_out(fit.slope * x + fit.intercept, "prediction") for x in p.predict or []],
        }

    return await _stat(compute, len(p.x), param="x")


class MovingAverageParams(ItemsParams):
    window: int = Field(
        3, ge=1, le=MAX_ITEMS, description="How many consecutive numbers each average covers."
    )


@operation("stats_moving_average", category="statistics", params=MovingAverageParams)
async def stats_moving_average(p: MovingAverageParams, ctx: OpContext) -> list[float]:
    """Simple moving averages over a sliding window: len(items) - window + 1 values, in order."""
    items = numbers(input_or_prev(p, "items", ctx), "items", at_least=p.window)

    def compute() -> list[float]:
        # A running total keeps this O(n) (re-summing each window is O(n * window)); exact for integers.
        total: Number = (
            math.fsum(items[: p.window])
            if any(isinstance(x, float) for x in items)
            else sum(items[: p.window])
        )
        out = [total / p.window]
        for i in range(p.window, len(items)):
            total += items[i] - items[i - p.window]
            out.append(total / p.window)
        return [float(_out(v, "average")) for v in out]

    return await _stat(compute, len(items))


OPERATIONS = (
    stats_describe,
    stats_mean,
    stats_median,
    stats_mode,
    stats_stdev,
    stats_variance,
    stats_quantiles,
    stats_percentile,
    stats_histogram,
    stats_zscores,
    stats_correlation,
    stats_linear_regression,
    stats_moving_average,
)
