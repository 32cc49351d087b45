"""Typed flows, at module level so that annotations resolve (``from __future__`` below)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypedDict
from uuid import UUID

from tideflow import Flow, step


class Tier(enum.Enum):
    GOLD = "gold"
    SILVER = "silver"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True)
class Line:
    sku: str
    qty: int
    price: Decimal


@dataclass(frozen=True)
class CheckoutInput:
    order_id: UUID
    placed_at: datetime
    lines: list[Line]
    tier: Tier = Tier.SILVER
    note: str | None = None


@dataclass(frozen=True)
class Receipt:
    order_id: UUID
    total: Decimal
    due: date
    tier: Tier
    seen: list[str] = field(default_factory=list)


class Totals(TypedDict):
    total: Decimal
    count: int


class Checkout(Flow[CheckoutInput], slug="typed_checkout"):
    @step()
    def price(self, input: CheckoutInput, ctx: Any) -> Totals:
        assert isinstance(input, CheckoutInput), type(input)
        assert isinstance(input.lines[0], Line) and isinstance(input.placed_at, datetime)
        assert isinstance(ctx.run_input, CheckoutInput)
        total = sum((line.price * line.qty for line in input.lines), Decimal("0"))
        return {"total": total, "count": len(input.lines)}

    @step(depends_on=["price"])
    def receipt(self, price: Totals, ctx: Any) -> Receipt:
        assert isinstance(price["total"], Decimal)
        run_input: CheckoutInput = ctx.run_input
        return Receipt(
            run_input.order_id,
            price["total"],
            run_input.placed_at.date(),
            run_input.tier,
            [type(run_input).__name__],
        )

    @step(depends_on=["receipt"])
    def confirm(self, receipt: Receipt) -> dict[str, Any]:
        assert isinstance(receipt, Receipt) and isinstance(receipt.tier, Tier)
        return {"receipt": receipt, "kind": type(receipt).__name__}


class Untyped(Flow, slug="typed_untyped"):
    """No declared types: values of the codec's types still come back as themselves."""

    @step()
    def echo(self, input: Any) -> Any:
        return {"in": input, "types": sorted({type(v).__name__ for v in input.values()})}


class WrongOutput(Flow[CheckoutInput], slug="typed_wrong_output"):
    @step()
    def bad(self, input: CheckoutInput) -> Receipt:
        return {"order_id": input.order_id}  # type: ignore[return-value]


@dataclass(frozen=True)
class Item:
    n: int
    tag: Priority


class Fanout(Flow[list[Item]], slug="typed_fanout"):
    @step(map=True)
    def each(self, item: Item) -> Item:
        assert isinstance(item, Item) and isinstance(item.tag, Priority)
        return Item(item.n * 2, Priority.HIGH)

    @step(depends_on=["each"])
    def total(self, each: list[Item]) -> int:
        assert all(isinstance(i, Item) for i in each)
        return sum(i.n for i in each)


try:
    from pydantic import BaseModel, Field
except ImportError:  # pragma: no cover - pydantic is in the dev extra
    BaseModel = None  # type: ignore[assignment,misc]

if BaseModel is not None:

    class Signup(BaseModel):
        email: str = Field(pattern=r".+@.+")
        seats: int = Field(ge=1)
        joined: date
        amount: Decimal

    class Welcome(BaseModel):
        email: str
        seats: int

    class Onboard(Flow[Signup], slug="typed_onboard"):
        @step()
        def greet(self, input: Signup) -> Welcome:
            assert isinstance(input, Signup) and isinstance(input.amount, Decimal)
            return Welcome(email=input.email, seats=input.seats * 2)

        @step(depends_on=["greet"])
        def done(self, greet: Welcome) -> str:
            assert isinstance(greet, Welcome)
            return f"{greet.email}:{greet.seats}"


SEEN: list[tuple[int, str, str]] = []


class RetriedTyped(Flow[CheckoutInput], slug="typed_retried", base_delay=0, max_attempts=3):
    """Types are the same on every attempt: the step always gets the stored value, decoded the
    same way (DBOS issue 697: a datetime in-process, a str after recovery)."""

    @step()
    def flaky(self, input: CheckoutInput, ctx: Any) -> Receipt:
        SEEN.append((ctx.attempt, type(input.placed_at).__name__, type(input).__name__))
        if ctx.attempt < 3:
            raise RuntimeError("try again")
        return Receipt(input.order_id, input.lines[0].price, input.placed_at.date(), input.tier)


class GoldOnly(Flow, slug="typed_gold_only"):
    """A condition on a typed value: the pattern holds an enum member and a date."""

    @step(if_={"tier": Tier.GOLD, "day": date(2026, 12, 7)})
    def perk(self, input: Any) -> str:
        return "perk"

    @step()
    def always(self, input: Any) -> str:
        return "always"
