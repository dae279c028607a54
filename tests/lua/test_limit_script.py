"""lua/gwc/redis_scripts/limit.lua against a real redis-server: GCRA on the server clock, all-or-none charging
across keys, the quota hash and the expiries, and the undo mode."""
import time
from pathlib import Path

import pytest

from support.redis_servers import RedisReplyError, RedisServer

SCRIPT = (Path(__file__).resolve().parents[2] / "lua/gwc/redis_scripts/limit.lua").read_text()


@pytest.fixture(scope="module")
def server():
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def redis(server):
    conn = server.connect()
    conn.call("FLUSHALL")
    yield conn
    conn.close()


def call(redis, rates, quota=None, mode="c"):
    """rates: [(key, T ms, capacity)]; quota: (key, limit, reset epoch s)."""
    keys = [k for k, _, _ in rates]
    args = [mode, str(len(rates))]
    for _, interval, capacity in rates:
        args += [repr(float(interval)), repr(float((capacity - 1) * interval))]
    if quota:
        keys.append(quota[0])
        args += [str(quota[1]), str(quota[2])]
    return redis.call("EVAL", SCRIPT, str(len(keys)), *keys, *args)


def server_ms(redis):
    sec, usec = redis.call("TIME")
    return int(sec) * 1000 + int(usec) / 1000


def test_burst_then_refusal_with_retry_after(redis):
    rate = [("gwc:{ip:1}:r:a", 1000.0, 3)]  # 1/s, burst 3
    replies = [call(redis, rate) for _ in range(4)]
    assert replies[0] == [0, 2, 1]
    assert replies[1] == [0, 1, 2]
    assert replies[2] == [0, 0, 3]
    refused, retry_ms = replies[3]
    assert refused == 1 and 900 < retry_ms <= 1000


def test_tat_is_on_the_server_clock_with_pexpire(redis):
    before = server_ms(redis)
    call(redis, [("gwc:{ip:2}:r:a", 100.0, 5)])
    after = server_ms(redis)
    tat = float(redis.call("GET", "gwc:{ip:2}:r:a"))
    assert before + 100 <= tat <= after + 100
    pttl = redis.call("PTTL", "gwc:{ip:2}:r:a")
    assert 1000 < pttl <= 1101  # TAT + 1 s


def test_all_or_none_across_keys(redis):
    wide = ("gwc:{c:alice}:r:wide", 10.0, 100)
    narrow = ("gwc:{c:alice}:r:narrow", 60000.0, 1)
    assert call(redis, [wide, narrow])[0] == 0
    wide_tat = redis.call("GET", wide[0])
    narrow_tat = redis.call("GET", narrow[0])
    refused = call(redis, [wide, narrow])
    assert refused[0] == 2
    assert redis.call("GET", wide[0]) == wide_tat  # the allowed key was not charged either
    assert redis.call("GET", narrow[0]) == narrow_tat


def test_quota_hash_fields_and_expireat(redis):
    reset = int(time.time()) + 3600
    key = "gwc:{c:bob}:q:free:1764633600"
    rate = [("gwc:{c:bob}:r:free", 10.0, 100)]
    assert call(redis, rate, (key, 2, reset)) == [0, 99, 1, 1, 1]
    assert call(redis, rate, (key, 2, reset))[-2:] == [0, 2]
    fields = redis.call("HGETALL", key)
    assert dict(zip(fields[::2], fields[1::2])) == {"used": "2", "limit": "2", "reset": str(reset)}
    ttl = redis.call("TTL", key)
    assert 3600 < ttl <= 3660  # EXPIREAT reset + 60
    rate_tat = redis.call("GET", rate[0][0])
    assert call(redis, rate, (key, 2, reset)) == [2, 0]  # the quota refuses: index after the rate keys
    assert redis.call("HGET", key, "used") == "2"
    assert redis.call("GET", rate[0][0]) == rate_tat  # and the rate was not charged


def test_quota_alone_and_raised_limit_keeps_use(redis):
    reset = int(time.time()) + 600
    key = "gwc:{c:carl}:q:pro:1764633600"
    assert call(redis, [], (key, 1, reset)) == [0, 0, 1]
    assert call(redis, [], (key, 1, reset)) == [1, 0]
    assert call(redis, [], (key, 5, reset)) == [0, 3, 2]  # raising the limit keeps the count
    assert redis.call("HGET", key, "limit") == "5"


def test_undo_takes_back_one_charge(redis):
    reset = int(time.time()) + 600
    rate = [("gwc:{c:dan}:r:x", 1000.0, 5)]
    quota = ("gwc:{c:dan}:q:free:1", 10, reset)
    call(redis, rate, quota)
    call(redis, rate, quota)
    tat = float(redis.call("GET", rate[0][0]))
    pttl = redis.call("PTTL", rate[0][0])
    assert call(redis, rate, quota, mode="u") == [0]
    assert float(redis.call("GET", rate[0][0])) == pytest.approx(tat - 1000.0, abs=1e-3)
    assert redis.call("HGET", quota[0], "used") == "1"
    assert 0 < redis.call("PTTL", rate[0][0]) <= pttl  # the expiry stays
    # Undo of keys that are gone creates nothing.
    assert call(redis, [("gwc:{c:dan}:r:gone", 1000.0, 5)], ("gwc:{c:dan}:q:gone", 1, reset), mode="u") == [0]
    assert redis.call("EXISTS", "gwc:{c:dan}:r:gone", "gwc:{c:dan}:q:gone") == 0


def test_refill_on_the_server_clock(redis):
    rate = [("gwc:{g}:r:fast", 50.0, 1)]  # 20/s, no burst
    assert call(redis, rate)[0] == 0
    assert call(redis, rate)[0] == 1
    time.sleep(0.06)
    assert call(redis, rate)[0] == 0


def test_many_keys_in_one_call(redis):
    rates = [(f"gwc:r:k{i}", 100.0, 2) for i in range(10)]
    reply = call(redis, rates)
    assert reply == [0] + [1, 1] * 10
    assert call(redis, rates)[0] == 0
    assert call(redis, rates)[0] == 1  # the first key refuses first


def test_wrong_type_is_an_error_reply(redis):
    redis.call("HSET", "gwc:{x}:r:bad", "a", "1")
    with pytest.raises(RedisReplyError):
        call(redis, [("gwc:{x}:r:bad", 100.0, 2)])
