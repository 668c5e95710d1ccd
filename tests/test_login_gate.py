"""The login gate: at most `concurrent` password checks at once and `queue` more waiting, the rest 503."""

from __future__ import annotations

import asyncio

import pytest

from vms.api.context import LoginBusy, LoginGate


async def _hold(gate: LoginGate, entered: asyncio.Event, leave: asyncio.Event) -> None:
    async with gate.slot():
        entered.set()
        await leave.wait()


def test_a_login_arriving_while_a_woken_waiter_has_not_run_yet_is_let_in():
    """A released check wakes the first waiter, which counts as waiting until it runs: a login arriving
    in between must still find room (it got 503 with the waiters counted apart: right passwords refused
    under load)."""

    async def scenario() -> None:
        gate = LoginGate(concurrent=1, queue=1)
        a_in, a_out, b_in, b_out = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(_hold(gate, a_in, a_out))
        await a_in.wait()
        b = asyncio.create_task(_hold(gate, b_in, b_out))
        await asyncio.sleep(0)  # b waits for the check
        with pytest.raises(LoginBusy):  # one running, one waiting: full
            async with gate.slot():
                pass
        a_out.set()
        c_in, c_out = asyncio.Event(), asyncio.Event()
        c = asyncio.create_task(_hold(gate, c_in, c_out))  # steps after a ends, before the woken b runs
        await asyncio.sleep(0)
        assert a.done() and not b_in.is_set() and not c.done(), "room for c: b runs, c waits"
        b_out.set()
        c_out.set()
        await asyncio.wait_for(asyncio.gather(b, c), 2)
        assert b_in.is_set() and c_in.is_set()

    asyncio.run(scenario())


def test_a_waiting_login_cancelled_gives_its_place_back():
    async def scenario() -> None:
        gate = LoginGate(concurrent=1, queue=1)
        a_in, a_out = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(_hold(gate, a_in, a_out))
        await a_in.wait()
        b = asyncio.create_task(_hold(gate, asyncio.Event(), asyncio.Event()))
        await asyncio.sleep(0)
        assert gate.occupied == 2
        b.cancel()  # the client went away while waiting
        with pytest.raises(asyncio.CancelledError):
            await b
        assert gate.occupied == 1
        a_out.set()
        await a
        assert gate.occupied == 0
        async with gate.slot():  # and the semaphore too
            assert gate.occupied == 1

    asyncio.run(scenario())
