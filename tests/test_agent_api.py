"""The agent's internal API itself (the shared ICompute suite in tests/test_compute.py runs
every call through it): who may talk to whom, and back-pressure across the relay.

The node here is a small producer standing in for a node's log follower: what is tested
is the relay between it and sdcd, over real mutual TLS on loopback."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from sdcd.agent import server as agent_server
from sdcd.agent.server import AgentFactory
from sdcd.auth import internal
from sdcd.compute.interface import ComputeError
from sdcd.compute.remote import RemoteCompute

ENTRY = b"x" * 16384


class FloodingNode:
    """``logs`` writes entries as fast as it may until stopped: pausing it is the only
    thing that bounds how much it makes."""

    node_id = "flood"

    def __init__(self) -> None:
        self.made = 0
        self.pauses = 0
        self._paused = False
        self._stopped = False
        self._consumer = None
        self.done: defer.Deferred = defer.Deferred()

    async def info(self) -> dict:
        return {"id": self.node_id}

    def logs(self, cid, options, consumer):
        self._consumer = consumer
        consumer.registerProducer(self, True)
        self._loop = task.LoopingCall(self._burst)
        self._loop.start(0.001)
        return self.done

    def _burst(self) -> None:
        if self._stopped:
            return
        for _ in range(16):
            if self._paused or self.made >= options_total:
                break
            self._consumer.entry("stdout", ENTRY, "2026-11-28T00:00:00.000000000Z")
            self.made += len(ENTRY)
        if self.made >= options_total and not self.done.called:
            self._loop.stop()
            self._consumer.unregisterProducer()
            self.done.callback(None)

    def pauseProducing(self) -> None:
        self.pauses += 1
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False

    def stopProducing(self) -> None:
        self._stopped = True


options_total = 64 * 1024 * 1024


class SlowConsumer:
    def __init__(self) -> None:
        self.received = 0
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        pass

    def entry(self, stream, data, time):
        if self.received == 0:
            self.producer.pauseProducing()
        self.received += len(data)


@pytest.fixture
def pki(tmp_path):
    ca_cert, ca_key = internal.internal_ca(tmp_path / "ca", "test")
    other_cert, other_key = internal.internal_ca(tmp_path / "other-ca", "other")
    return {
        "node": internal.issue(ca_cert, ca_key, "node", "flood", ["127.0.0.1"]),
        "othernode": internal.issue(ca_cert, ca_key, "node", "someone-else", ["127.0.0.1"]),
        "api": internal.issue(ca_cert, ca_key, "api", "sdcd", []),
        "foreign_api": internal.issue(other_cert, other_key, "api", "sdcd", []),
    }


@pytest.fixture
def agent(pki):
    node = FloodingNode()
    port = agent_server.listen(reactor, 0, "127.0.0.1", pki["node"], AgentFactory(node))
    yield node, port.getHost().port
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def remote(port: int, material, node_id: str = "flood") -> RemoteCompute:
    return RemoteCompute(reactor, node_id, "127.0.0.1", port, material)


@pytest_twisted.ensureDeferred
async def test_api_certificate_is_served(agent, pki):
    _node, port = agent
    client = remote(port, pki["api"])
    assert await client.info() == {"id": "flood"}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_node_certificate_is_not_served(agent, pki):
    """Only sdcd instances may drive a node: another node's certificate is refused."""
    _node, port = agent
    impostor = remote(port, pki["othernode"])
    with pytest.raises(ComputeError) as e:
        await impostor.info()
    assert e.value.kind == "unavailable"
    await impostor.close()


@pytest_twisted.ensureDeferred
async def test_another_ca_is_refused(agent, pki):
    _node, port = agent
    foreign = remote(port, pki["foreign_api"])
    with pytest.raises(ComputeError):
        await foreign.info()
    await foreign.close()


@pytest_twisted.ensureDeferred
async def test_sdcd_refuses_a_node_that_is_not_the_one_it_dialled(agent, pki):
    _node, port = agent
    client = remote(port, pki["api"], node_id="someone-else")
    with pytest.raises(ComputeError) as e:
        await client.info()
    assert "refused" in e.value.message and "node:flood" in e.value.message
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_paused_reader_pauses_the_node(agent, pki):
    """sdcd's consumer pauses after the first entry: TCP fills, the agent's transport
    pauses the node's producer, and the node stops making entries long before 64 MiB;
    resumed, everything arrives."""
    node, port = agent
    client = remote(port, pki["api"])
    consumer = SlowConsumer()
    done = client.logs("c", {}, consumer)
    await task.deferLater(reactor, 1.5, lambda: None)
    assert node.pauses >= 1
    assert node.made < 16 * 1024 * 1024, node.made
    assert not done.called
    consumer.producer.resumeProducing()
    await done
    assert consumer.received == node.made == options_total
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_node_that_never_answers_is_unreachable(agent, pki, monkeypatch):
    """A frozen node (no answer, no RST) fails the call after the call timeout."""
    from sdcd.compute import remote as remote_module

    node, port = agent
    node.info = lambda: defer.Deferred()  # never fires
    monkeypatch.setattr(remote_module, "CALL_TIMEOUT", 0.5)
    client = remote(port, pki["api"])
    with pytest.raises(ComputeError) as e:
        await client.info()
    assert e.value.kind == "unavailable" and "no answer to info" in e.value.message
    await client.close()
