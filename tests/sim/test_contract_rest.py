"""Contract tests for the simulator's REST API (auth, Accept, rate limits, stream sessions,
market data, positions, balances), each assertion written from
``shared/reference/tradier-api.md``; real HTTP on loopback, real clock."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import trio

from tests.sim.contract_support import (
    ACCOUNT,
    CALL_700,
    PUT_645,
    PUT_650,
    client,
    contract_sim,
    is_iso_utc,
    is_json_number,
    is_occ,
    scenario_text,
)

# 2025-12-09 09:45 America/New_York (EST, UTC-5): the scenario's start in epoch seconds.
START_EPOCH = int(dt.datetime(2025, 12, 9, 14, 45, tzinfo=dt.UTC).timestamp())
_RATE_HEADERS = ("X-Ratelimit-Allowed", "X-Ratelimit-Used", "X-Ratelimit-Available",
                 "X-Ratelimit-Expiry")
_GREEKS = {"delta", "gamma", "theta", "vega", "rho", "phi", "bid_iv", "mid_iv", "ask_iv",
           "smv_vol", "updated_at"}


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


async def test_bearer_token_must_match_else_401_json_fault() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            positions = f"{handle.rest_url}/accounts/{ACCOUNT}/positions"
            async with httpx.AsyncClient(timeout=5) as http:
                for headers in ({"Accept": "application/json"},
                                {"Accept": "application/json",
                                 "Authorization": "Bearer not-the-token"}):
                    answer = await http.get(positions, headers=headers)
                    assert answer.status_code == 401
                    fault = answer.json()["fault"]
                    assert fault["faultstring"] == "Invalid Access Token"
                    assert fault["detail"] == {
                        "errorcode": "keymanagement.service.invalid_access_token"}
            async with client(handle) as http:
                assert (await http.get(f"/accounts/{ACCOUNT}/positions")).status_code == 200
            nursery.cancel_scope.cancel()


async def test_accept_header_decides_json() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                ok = await http.get("/markets/clock")
                assert ok.status_code == 200
                assert ok.headers["content-type"].startswith("application/json")
                # Reference: without Accept: application/json Tradier answers XML. The
                # simulator does not speak XML (sim/README.md): it refuses with 406 plain text.
                for accept in ("application/xml", "*/*"):
                    refused = await http.get("/markets/clock", headers={"Accept": accept})
                    assert refused.status_code == 406
                    assert refused.headers["content-type"].startswith("text/plain")
            nursery.cancel_scope.cancel()


async def test_rate_limit_headers_per_group_and_refusal_when_exceeded() -> None:
    limits = "{ standard = 3, market_data = 5, trading = 60 }"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            # Speed 1: the 60 s window cannot roll over during the test.
            handle = await contract_sim(nursery, scenario_text(speed=1.0, rate_limits=limits))
            async with client(handle) as http:
                used = []
                for _ in range(3):
                    answer = await http.get(f"/accounts/{ACCOUNT}/positions")
                    assert answer.status_code == 200
                    values = {name: answer.headers[name] for name in _RATE_HEADERS}
                    assert all(v.isdigit() for v in values.values()), values
                    allowed, count, available, expiry = (int(values[n]) for n in _RATE_HEADERS)
                    assert allowed == 3 and available == allowed - count
                    # Expiry is epoch milliseconds: within a minute (and a little) of the
                    # market's clock, which started at START_EPOCH.
                    assert START_EPOCH * 1000 < expiry <= (START_EPOCH + 70) * 1000
                    used.append(count)
                assert used == [1, 2, 3]
                # Market data is its own group with its own count.
                market = await http.get("/markets/clock")
                assert market.headers["X-Ratelimit-Allowed"] == "5"
                assert market.headers["X-Ratelimit-Used"] == "1"
                # Placing, changing and cancelling orders is the trading group.
                placed = await http.post(f"/accounts/{ACCOUNT}/orders", data={
                    "class": "option", "symbol": "SPY", "option_symbol": PUT_650,
                    "side": "buy_to_close", "quantity": "1", "type": "limit",
                    "duration": "day", "price": "0.01"})
                assert placed.status_code == 200, placed.text
                assert placed.headers["X-Ratelimit-Allowed"] == "60"
                assert placed.headers["X-Ratelimit-Used"] == "1"
                # The refusal's status is "unsure" in the reference; sim/README.md chose 429
                # with a JSON fault.
                refused = await http.get(f"/accounts/{ACCOUNT}/balances")
                assert refused.status_code == 429
                assert "faultstring" in refused.json()["fault"]
                assert refused.headers["X-Ratelimit-Available"] == "0"
            nursery.cancel_scope.cancel()


async def test_stream_sessions() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                ids = set()
                for kind in ("markets", "accounts"):
                    # No body: Content-Length 0, as the reference says to send.
                    answer = await http.post(f"/{kind}/events/session",
                                             headers={"Content-Length": "0"})
                    assert answer.status_code == 200
                    stream = answer.json()["stream"]
                    assert set(stream) == {"url", "sessionid"}
                    assert stream["url"].endswith(f"/v1/{kind}/events")
                    uuid.UUID(stream["sessionid"])
                    ids.add(stream["sessionid"])
                assert len(ids) == 2
            nursery.cancel_scope.cancel()


async def test_option_and_underlying_quotes_with_greeks() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                answer = await http.get("/markets/quotes", params={
                    "symbols": f"SPY,{PUT_650},{CALL_700}", "greeks": "true"})
                quotes = answer.json()["quotes"]["quote"]
                assert [q["symbol"] for q in quotes] == ["SPY", PUT_650, CALL_700]
                put, call = quotes[1], quotes[2]
                for option, right, strike in ((put, "put", 650), (call, "call", 700)):
                    assert option["underlying"] == "SPY"
                    assert option["root_symbol"] == "SPY"
                    assert option["strike"] == strike and is_json_number(option["strike"])
                    assert option["option_type"] == right
                    assert option["expiration_date"] == "2025-12-19"
                    assert option["contract_size"] == 100
                    assert is_json_number(option["open_interest"])
                    for field in ("bid", "ask"):
                        assert is_json_number(option[field]), field
                    assert option["bid"] <= option["ask"]
                    assert option["last"] is None or is_json_number(option["last"])
                    for field in ("bidsize", "asksize"):
                        assert isinstance(option[field], int), field
                    for field in ("bid_date", "ask_date"):  # epoch ms as numbers (REST)
                        value = option[field]
                        assert isinstance(value, int) and not isinstance(value, bool)
                        assert START_EPOCH * 1000 <= value < (START_EPOCH + 3600) * 1000
                    greeks = option["greeks"]
                    assert _GREEKS <= set(greeks)
                    for field in _GREEKS - {"updated_at", "bid_iv", "ask_iv", "mid_iv"}:
                        assert is_json_number(greeks[field]), field
                    assert greeks["mid_iv"] is None or greeks["mid_iv"] > 0
                assert -1 < put["greeks"]["delta"] < 0 < call["greeks"]["delta"] < 1
                assert put["greeks"]["gamma"] > 0
                assert is_json_number(quotes[0]["bid"]) and "greeks" not in quotes[0]

                plain = (await http.get("/markets/quotes", params={"symbols": PUT_650}))
                one = plain.json()["quotes"]["quote"]
                assert isinstance(one, dict)  # one quote collapses to a bare object
                assert one["symbol"] == PUT_650 and one.get("greeks") is None

                # POST works as GET does.
                posted = await http.post("/markets/quotes", data={"symbols": "SPY"})
                assert posted.json()["quotes"]["quote"]["symbol"] == "SPY"
            nursery.cancel_scope.cancel()


async def test_unmatched_symbols_collapse() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                one = (await http.get("/markets/quotes", params={"symbols": "SPY,XXX"})).json()
                assert one["quotes"]["unmatched_symbols"] == {"symbol": "XXX"}
                assert one["quotes"]["quote"]["symbol"] == "SPY"
                two = (await http.get("/markets/quotes", params={"symbols": "XXX,YYY"})).json()
                assert two["quotes"]["unmatched_symbols"] == {"symbol": ["XXX", "YYY"]}
            nursery.cancel_scope.cancel()


async def test_chains_and_expirations() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                chain = (await http.get("/markets/options/chains", params={
                    "symbol": "SPY", "expiration": "2025-12-19", "greeks": "true"})).json()
                options = chain["options"]["option"]
                assert isinstance(options, list) and len(options) >= 2
                assert {o["option_type"] for o in options} == {"put", "call"}
                for option in options:
                    assert is_occ(option["symbol"])
                    assert option["underlying"] == "SPY"
                    assert option["expiration_date"] == "2025-12-19"
                    assert set(option["greeks"]) >= _GREEKS
                assert PUT_650 in {o["symbol"] for o in options}
                empty = await http.get("/markets/options/chains", params={
                    "symbol": "SPY", "expiration": "2025-12-26"})
                assert empty.json() == {"options": None}  # JSON null, not "null"

                spy = (await http.get("/markets/options/expirations",
                                      params={"symbol": "SPY"})).json()
                assert spy == {"expirations": {"date": ["2025-12-19", "2026-01-16"]}}
                qqq = (await http.get("/markets/options/expirations",
                                      params={"symbol": "QQQ"})).json()
                assert qqq == {"expirations": {"date": "2025-12-19"}}  # one date: a string
                none = (await http.get("/markets/options/expirations",
                                       params={"symbol": "NOPE"})).json()
                assert none == {"expirations": None}
            nursery.cancel_scope.cancel()


async def test_clock_and_calendar() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                clock = (await http.get("/markets/clock")).json()["clock"]
                assert set(clock) >= {"date", "description", "state", "timestamp",
                                      "next_change", "next_state"}
                assert clock["date"] == "2025-12-09"
                assert clock["state"] == "open"  # 09:45 ET on a Tuesday
                assert clock["next_state"] == "postmarket" and clock["next_change"] == "16:00"
                assert isinstance(clock["timestamp"], int)  # unix seconds
                assert START_EPOCH <= clock["timestamp"] < START_EPOCH + 3600
                assert isinstance(clock["description"], str)

                answer = await http.get("/markets/calendar", params={"month": "12",
                                                                     "year": "2025"})
                days = _as_list(answer.json()["calendar"]["days"]["day"])
                by_date = {d["date"]: d for d in days if isinstance(d, dict)}
                assert len(by_date) == 31
                tuesday = by_date["2025-12-09"]
                assert tuesday["status"] == "open"
                assert tuesday["open"] == {"start": "09:30", "end": "16:00"}
                assert by_date["2025-12-06"]["status"] == "closed"  # a Saturday
            nursery.cancel_scope.cancel()


async def test_positions_collapse_and_null_string() -> None:
    one_held = f"""
[[positions]]
symbol = "{PUT_645}"
quantity = 3
cost_basis = "450.00"
"""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            two = await contract_sim(nursery)
            one = await contract_sim(nursery, scenario_text(positions=one_held))
            none = await contract_sim(nursery, scenario_text(positions=""))
            async with client(two) as http:
                listed = (await http.get(f"/accounts/{ACCOUNT}/positions")).json()
            positions = listed["positions"]["position"]
            assert isinstance(positions, list) and len(positions) == 2
            short = next(p for p in positions if p["symbol"] == PUT_650)
            assert short["quantity"] == -2 and isinstance(short["quantity"], float)
            assert short["cost_basis"] == -300  # total, signed
            assert is_json_number(short["cost_basis"])
            for position in positions:
                assert set(position) >= {"cost_basis", "date_acquired", "id", "quantity",
                                         "symbol"}
                assert is_occ(position["symbol"])
                assert is_iso_utc(position["date_acquired"])
            async with client(one) as http:
                single = (await http.get(f"/accounts/{ACCOUNT}/positions")).json()
            assert isinstance(single["positions"]["position"], dict)
            assert single["positions"]["position"]["quantity"] == 3
            assert single["positions"]["position"]["cost_basis"] == 450
            async with client(none) as http:
                empty = (await http.get(f"/accounts/{ACCOUNT}/positions")).json()
            assert empty == {"positions": "null"}  # the string, not JSON null
            nursery.cancel_scope.cancel()


async def test_balances_answer() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                balances = (await http.get(f"/accounts/{ACCOUNT}/balances")).json()["balances"]
                assert balances["account_number"] == ACCOUNT
                assert balances["total_cash"] == 10000 and is_json_number(balances["total_cash"])
                assert is_json_number(balances["total_equity"])
            nursery.cancel_scope.cancel()
