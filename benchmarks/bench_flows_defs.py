"""Flows measured by bench_flows.py (a module of their own so worker processes can import it)."""

from tideflow import Flow, step


class NoOp(Flow, slug="bench_noop"):
    @step()
    async def only(self, input):
        return None


class Chain3(Flow, slug="bench_chain3"):
    @step()
    async def one(self, input):
        return 1

    @step(depends_on=["one"])
    async def two(self, one):
        return one + 1

    @step(depends_on=["two"])
    async def three(self, two):
        return two + 1


class MapThousand(Flow, slug="bench_map"):
    @step(map=True)
    async def each(self, item):
        return item


FLOWS = [NoOp, Chain3, MapThousand]


class NoOpLimited(Flow, slug="bench_noop_limited", concurrency=1_000_000):
    """NoOp with a flow limit that never binds: what the limited claim costs by itself."""

    @step()
    async def only(self, input):
        return None


class NoOpPerKey(Flow, slug="bench_noop_per_key", concurrency_key="k", key_concurrency=100):
    """NoOp limited per key (the runs spread over 64 keys): the ranking's cost."""

    @step()
    async def only(self, input):
        return None


FLOWS += [NoOpLimited, NoOpPerKey]


class NoOpSync(Flow, slug="bench_noop_sync"):
    """NoOp with a plain ``def`` step: it runs in the worker's thread pool."""

    @step()
    def only(self, input):
        return None


FLOWS.append(NoOpSync)
