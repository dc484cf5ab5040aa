"""Simulator scenarios: TOML files decoded into frozen msgspec Structs.

A scenario says where the simulated market starts (market time, speed, seed), which underlyings
exist and how they move, what the account holds, which engine-side trades to pre-seed, and which
faults to inject when. The format is documented with a worked example in ``sim/README.md``.

Every problem is reported as one :class:`engine.errors.ScenarioError` whose message names the
file, the field and why: ``scenario.toml: underlyings[0].volatility: must be > 0, got -0.2``.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import msgspec

from engine.domain.occ import OptionSymbol
from engine.errors import InvalidSymbol, ScenarioError
from sim.scenario_errors import explain

__all__ = [
    "EASTERN",
    "BrokerCancel",
    "BrokerConfig",
    "CrossedQuote",
    "DropAccountSocket",
    "DropMarketSocket",
    "Fault",
    "HttpErrors",
    "Keyframe",
    "KeyframesPath",
    "Latency",
    "Leg",
    "LoseAccountEvents",
    "ManualClose",
    "MarketConfig",
    "NullPositions",
    "OpenOrder",
    "PathSpec",
    "Position",
    "RandomWalkPath",
    "RateLimits",
    "RejectOrders",
    "ReplayPath",
    "Scenario",
    "StaleQuotes",
    "StrikeRange",
    "Trade",
    "TradeLeg",
    "Underlying",
    "ZeroBid",
    "load_scenario",
    "parse_duration",
    "parse_scenario",
]

EASTERN = ZoneInfo("America/New_York")

Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Money = Decimal
# A point in market time: seconds after the start ("90s", "5m", 90) or a time of day on the
# start date in the start's zone ("10:15", "10:15:30").
When = str | float
# A length of market time: "250ms", "30s", "5m", "1h30m" or a number of seconds.
Span = str | float

_SPAN = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?"
                   r"(?:(\d+(?:\.\d+)?)ms)?$")
_TIME_OF_DAY = re.compile(r"^\d{1,2}:\d{2}(?::\d{2})?$")
_SYMBOL = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")
_TAG = re.compile(r"^[A-Za-z0-9-]{1,255}$")


def parse_duration(value: str | float) -> float:
    """Seconds in ``value``: a number, or ``1h``, ``5m``, ``30s``, ``250ms`` and combinations."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"must be >= 0 seconds, got {value}")
        return float(value)
    match = _SPAN.match(str(value).strip())
    if not value or match is None or not any(match.groups()):
        raise ValueError(f"must be a duration like '90s', '5m', '1h30m' or seconds, got {value!r}")
    hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def _time_of_day(text: str) -> dt.time:
    parts = [int(p) for p in text.split(":")] + [0]
    return dt.time(parts[0], parts[1], parts[2])


def _check_when(value: When) -> None:
    if isinstance(value, str) and _TIME_OF_DAY.match(value):
        _time_of_day(value)  # raises ValueError for 25:00
        return
    parse_duration(value)


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


# ---------------------------------------------------------------- underlyings and their paths


class Keyframe(_Strict, frozen=True):
    at: When
    price: Positive

    def __post_init__(self) -> None:
        _field("at", _check_when, self.at)


class KeyframesPath(_Strict, frozen=True, tag="keyframes", tag_field="kind"):
    """Linear interpolation between keyframes; flat before the first and after the last."""

    points: Annotated[list[Keyframe], msgspec.Meta(min_length=1)]


class RandomWalkPath(_Strict, frozen=True, tag="random_walk", tag_field="kind"):
    """A seeded geometric random walk, one step every ``step`` of market time, interpolated."""

    start: Positive
    step: Span = "1s"
    volatility: Positive | None = None  # annualized; default: the underlying's volatility
    drift: float = 0.0  # annualized

    def __post_init__(self) -> None:
        if _field("step", parse_duration, self.step) <= 0:
            raise ValueError(f"step: must be > 0, got {self.step!r}")


class ReplayPath(_Strict, frozen=True, tag="replay", tag_field="kind"):
    """JSON lines ``{"at": <seconds after start | ISO datetime>, "price": 681.2}``; each price
    holds until the next line."""

    file: str


PathSpec = KeyframesPath | RandomWalkPath | ReplayPath


class StrikeRange(_Strict, frozen=True):
    low: Positive
    high: Positive
    step: Positive

    def __post_init__(self) -> None:
        if self.high < self.low:
            raise ValueError(f"high: must be >= low ({self.low}), got {self.high}")
        if (self.high - self.low) / self.step > 2000:
            raise ValueError("step: more than 2000 strikes in the range")


class Underlying(_Strict, frozen=True):
    symbol: str
    path: PathSpec
    volatility: Positive
    skew: float = 0.0  # vol(K) = volatility - skew * ln(K / S), floored at 1%
    root: str | None = None  # option root; default the symbol without dots
    description: str = ""
    type: Literal["etf", "stock", "index"] = "etf"
    expirations: list[dt.date] = msgspec.field(default_factory=list)
    strikes: StrikeRange | list[Positive] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if not _SYMBOL.match(self.symbol):
            raise ValueError(f"symbol: must be an upper-case ticker, got {self.symbol!r}")
        if self.root is not None and not re.match(r"^[A-Z0-9]{1,6}$", self.root):
            raise ValueError(f"root: must be 1-6 of A-Z0-9, got {self.root!r}")

    @property
    def option_root(self) -> str:
        return self.root or self.symbol.replace(".", "")

    def strike_list(self) -> list[Decimal]:
        if isinstance(self.strikes, StrikeRange):
            low, step = _dec(self.strikes.low), _dec(self.strikes.step)
            count = int((_dec(self.strikes.high) - low) / step)
            return [_dec(low + step * i) for i in range(count + 1)]
        return sorted(_dec(s) for s in self.strikes)


# ---------------------------------------------------------------- market, broker and limits


class MarketConfig(_Strict, frozen=True):
    tick_interval_ms: PositiveInt = 100  # real ms between model updates
    quote_interval_ms: NonNegInt = 100  # real ms, at most one stream quote per symbol per this
    rate: float = 0.04  # risk-free rate for Black-Scholes
    tick_size: Money = Decimal("0.01")
    width_fraction: Annotated[float, msgspec.Meta(ge=0)] = 0.04  # option width / theo
    min_width: Money = Decimal("0.02")
    max_width: Money = Decimal("0.50")
    underlying_width: Money = Decimal("0.02")
    bid_size: PositiveInt = 20
    ask_size: PositiveInt = 20

    def __post_init__(self) -> None:
        for name in ("tick_size", "max_width"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("min_width", "underlying_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")


class RateLimits(_Strict, frozen=True):
    """Requests per 60 s window of market time, per group."""

    standard: PositiveInt = 120
    market_data: PositiveInt = 120
    trading: PositiveInt = 60


_NAMED_LIMITS = {
    "live": RateLimits(),
    "sandbox": RateLimits(standard=60, market_data=60, trading=60),
}


class BrokerConfig(_Strict, frozen=True):
    cash: Money = Decimal("100000")
    account_type: Literal["margin", "cash"] = "margin"
    fill_lot: NonNegInt = 0  # 0: fill whole orders at once; N: at most N spreads per fill
    fill_interval: Span = "1s"  # market time between two lots of one order
    rate_limits: Literal["live", "sandbox", "off"] | RateLimits = "live"

    def __post_init__(self) -> None:
        _field("fill_interval", parse_duration, self.fill_interval)

    def limits(self) -> RateLimits | None:
        if isinstance(self.rate_limits, RateLimits):
            return self.rate_limits
        return _NAMED_LIMITS.get(self.rate_limits)


# ---------------------------------------------------------------- the account's starting state

Side = Literal["buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close"]


def _check_occ(name: str, value: str) -> None:
    try:
        OptionSymbol.parse(value)
    except InvalidSymbol as exc:
        raise ValueError(f"{name}: {exc}") from None


class Position(_Strict, frozen=True):
    symbol: str
    quantity: int  # negative = short
    cost_basis: Money | None = None  # total, signed; default: the theo price at the start
    date_acquired: dt.datetime | None = None

    def __post_init__(self) -> None:
        _check_occ("symbol", self.symbol)
        if self.quantity == 0:
            raise ValueError("quantity: must not be 0")


class Leg(_Strict, frozen=True):
    option_symbol: str
    side: Side
    quantity: PositiveInt

    def __post_init__(self) -> None:
        _check_occ("option_symbol", self.option_symbol)


class OpenOrder(_Strict, frozen=True, rename={"order_class": "class"}):
    order_class: Literal["option", "multileg"]
    legs: Annotated[list[Leg], msgspec.Meta(min_length=1, max_length=4)]
    type: Literal["market", "limit", "debit", "credit", "even"] = "limit"
    duration: Literal["day", "gtc"] = "gtc"
    price: Money | None = None
    tag: str | None = None

    def __post_init__(self) -> None:
        if self.order_class == "option" and len(self.legs) != 1:
            raise ValueError("legs: a class=option order has exactly one leg")
        if self.order_class == "multileg" and len(self.legs) < 2:
            raise ValueError("legs: a class=multileg order has 2 to 4 legs")
        if self.type not in {"market", "even"} and (self.price is None or self.price <= 0):
            raise ValueError(f"price: a {self.type} order needs a price > 0")
        if self.tag is not None and not _TAG.match(self.tag):
            raise ValueError("tag: at most 255 letters, digits and '-'")


class TradeLeg(_Strict, frozen=True):
    option_symbol: str
    side: Literal["long", "short"]
    ratio: PositiveInt = 1

    def __post_init__(self) -> None:
        _check_occ("option_symbol", self.option_symbol)


class Trade(_Strict, frozen=True):
    """An engine-side trade to pre-seed; the simulator only carries it into the report."""

    legs: Annotated[list[TradeLeg], msgspec.Meta(min_length=1, max_length=4)]
    entry_price: Money
    quantity: PositiveInt
    id: str | None = None
    origin: Literal["ENGINE", "MANUAL", "IMPORTED"] = "ENGINE"
    managed: bool = True
    strategy: str | None = None
    exit_plan: dict[str, Any] = msgspec.field(default_factory=dict)


# ---------------------------------------------------------------- faults


class _FaultBase(_Strict, frozen=True, tag_field="kind"):
    at: When = 0.0

    def __post_init__(self) -> None:
        _field("at", _check_when, self.at)


class DropMarketSocket(_FaultBase, frozen=True, tag="drop_market_socket"):
    pass


class DropAccountSocket(_FaultBase, frozen=True, tag="drop_account_socket"):
    pass


class HttpErrors(_FaultBase, frozen=True, tag="http_errors"):
    """The next ``count`` requests whose path matches ``path`` (fnmatch) answer ``status``.
    With ``apply`` the request takes effect first (an ambiguous outcome for the client)."""

    status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 500
    path: str = "/v1/*"
    method: str | None = None
    count: PositiveInt = 1
    apply: bool = False


class Latency(_FaultBase, frozen=True, tag="latency"):
    ms: PositiveInt = 500
    duration: Span = "1m"
    path: str = "/v1/*"

    def __post_init__(self) -> None:
        super().__post_init__()
        _field("duration", parse_duration, self.duration)


class LoseAccountEvents(_FaultBase, frozen=True, tag="lose_account_events"):
    duration: Span = "30s"

    def __post_init__(self) -> None:
        super().__post_init__()
        _field("duration", parse_duration, self.duration)


class NullPositions(_FaultBase, frozen=True, tag="null_positions"):
    count: PositiveInt = 1


class _SymbolFault(_FaultBase, frozen=True):
    symbol: str = ""
    duration: Span = "30s"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.symbol:
            raise ValueError("symbol: required")
        _field("duration", parse_duration, self.duration)


class StaleQuotes(_SymbolFault, frozen=True, tag="stale_quotes"):
    pass


class CrossedQuote(_SymbolFault, frozen=True, tag="crossed_quote"):
    pass


class ZeroBid(_SymbolFault, frozen=True, tag="zero_bid"):
    pass


class RejectOrders(_FaultBase, frozen=True, tag="reject_orders"):
    """The next ``count`` orders are rejected: at placement (HTTP 200 with ``errors``) or, with
    ``after_accept``, accepted and then moved to status ``rejected``."""

    count: PositiveInt = 1
    reason: str = "Order rejected by the simulator (injected fault)"
    after_accept: bool = False


class ManualClose(_FaultBase, frozen=True, tag="manual_close"):
    """Someone closes positions by hand at the broker: an untagged market order that fills."""

    symbols: Annotated[list[str], msgspec.Meta(min_length=1, max_length=4)] = msgspec.field(
        default_factory=list
    )
    quantity: PositiveInt | None = None  # default: everything held

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.symbols:
            raise ValueError("symbols: at least one option symbol is required")
        for symbol in self.symbols:
            _check_occ("symbols", symbol)


class BrokerCancel(_FaultBase, frozen=True, tag="broker_cancel"):
    """The broker cancels an open order: by id, by tag, or (neither given) every open order."""

    order_id: int | None = None
    tag: str | None = None


Fault = (
    DropMarketSocket | DropAccountSocket | HttpErrors | Latency | LoseAccountEvents
    | NullPositions | StaleQuotes | CrossedQuote | ZeroBid | RejectOrders | ManualClose
    | BrokerCancel
)


# ---------------------------------------------------------------- the scenario


class Scenario(_Strict, frozen=True):
    start: dt.datetime  # naive = America/New_York
    underlyings: Annotated[list[Underlying], msgspec.Meta(min_length=1)]
    name: str = ""
    description: str = ""
    speed: Positive = 1.0  # market seconds per real second
    duration: Span = "30m"
    seed: int = 0
    token: str = "sim-token"
    account_id: str = "VA00000001"
    market: MarketConfig = msgspec.field(default_factory=MarketConfig)
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    positions: list[Position] = msgspec.field(default_factory=list)
    orders: list[OpenOrder] = msgspec.field(default_factory=list)
    trades: list[Trade] = msgspec.field(default_factory=list)
    faults: list[Fault] = msgspec.field(default_factory=list)
    base_dir: str = "."  # where relative replay files are found; set by load_scenario

    def __post_init__(self) -> None:
        _field("duration", parse_duration, self.duration)
        if not self.token or not re.match(r"^[A-Za-z0-9._-]+$", self.token):
            raise ValueError("token: must be non-empty letters, digits, '.', '_' or '-'")
        if not re.match(r"^[A-Za-z0-9]{1,20}$", self.account_id):
            raise ValueError(f"account_id: must be 1-20 letters or digits, got {self.account_id!r}")
        self._check_symbols()

    def _check_symbols(self) -> None:
        seen: set[str] = set()
        for i, underlying in enumerate(self.underlyings):
            if underlying.option_root in seen or underlying.symbol in seen:
                raise ValueError(f"underlyings[{i}].symbol: duplicate {underlying.symbol!r}")
            seen.update({underlying.symbol, underlying.option_root})
        roots = {u.option_root for u in self.underlyings}
        held: set[str] = set()
        for i, position in enumerate(self.positions):
            if OptionSymbol.parse(position.symbol).root not in roots:
                raise ValueError(f"positions[{i}].symbol: no underlying has root of "
                                 f"{position.symbol!r}")
            if position.symbol in held:
                raise ValueError(f"positions[{i}].symbol: duplicate {position.symbol!r}")
            held.add(position.symbol)
        for i, order in enumerate(self.orders):
            for j, leg in enumerate(order.legs):
                if OptionSymbol.parse(leg.option_symbol).root not in roots:
                    raise ValueError(f"orders[{i}].legs[{j}].option_symbol: unknown root")
        for i, trade in enumerate(self.trades):
            for j, tleg in enumerate(trade.legs):
                if OptionSymbol.parse(tleg.option_symbol).root not in roots:
                    raise ValueError(f"trades[{i}].legs[{j}].option_symbol: unknown root")

    # -- derived values -------------------------------------------------------------------

    @property
    def start_time(self) -> dt.datetime:
        """The start as an aware datetime (naive values are Eastern time)."""
        return self.start if self.start.tzinfo else self.start.replace(tzinfo=EASTERN)

    @property
    def duration_seconds(self) -> float:
        return parse_duration(self.duration)

    def offset_of(self, when: When) -> float:
        """Market seconds after the start at which ``when`` falls (may be negative)."""
        if isinstance(when, str) and _TIME_OF_DAY.match(when):
            start = self.start_time
            moment = dt.datetime.combine(start.date(), _time_of_day(when), tzinfo=start.tzinfo)
            return (moment - start).total_seconds()
        return parse_duration(when)

    def underlying_for_root(self, root: str) -> Underlying | None:
        for underlying in self.underlyings:
            if underlying.option_root == root or underlying.symbol == root:
                return underlying
        return None


# ---------------------------------------------------------------- loading and error messages


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file. Raises ScenarioError naming the field and why."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc.strerror or exc}") from exc
    scenario = parse_scenario(text, source=str(path))
    base = str(path.resolve().parent)
    scenario = msgspec.structs.replace(scenario, base_dir=base, name=scenario.name or path.stem)
    from sim.paths import build_path  # paths imports this module

    for index, underlying in enumerate(scenario.underlyings):
        if isinstance(underlying.path, ReplayPath):
            try:
                build_path(scenario, index)  # read the replay file now, not mid-run
            except ScenarioError as exc:
                raise ScenarioError(f"{path}: {exc}") from exc
    return scenario


def parse_scenario(text: str, *, source: str = "<string>") -> Scenario:
    """Validate scenario TOML text. ``source`` names the file in error messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from exc
    if "base_dir" in raw:
        raise ScenarioError(f"{source}: base_dir: unknown field")
    raw = _plain_times(raw)
    try:
        return msgspec.convert(raw, Scenario, strict=False)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{source}: {explain(str(exc), raw)}") from exc


def _plain_times(value: Any) -> Any:
    """TOML times-of-day (``at = 10:15:00``) become strings: the fields hold ``str | float``."""
    if isinstance(value, dict):
        return {k: _plain_times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_times(v) for v in value]
    if isinstance(value, dt.time):
        return value.isoformat()
    return value


def _dec(value: float | Decimal) -> Decimal:
    """A strike as a plain Decimal: 600, 602.5 (never 6E+2 or 600.0)."""
    number = Decimal(str(value))
    if number == number.to_integral_value():
        return number.quantize(Decimal(1))
    return number.normalize()


def _field(name: str, check: Any, value: Any) -> Any:
    """Run ``check(value)``; prefix a ValueError with the field name for the message."""
    try:
        return check(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}: {exc}") from None
