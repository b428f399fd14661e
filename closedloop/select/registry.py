"""The strategies a protocol can name, and :func:`make_strategy`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from closedloop.errors import ClosedLoopError
from closedloop.select.hypotheses import HypothesisStrategy
from closedloop.select.strategies import (AdeptStrategy, DisagreementStrategy, FixedStrategy, GaudyStrategy,
                                          InfoGainStrategy, MaxResponseStrategy, RandomStrategy, Strategy)
from closedloop.select.synthesis import EvolutionStrategy, SynthesisStrategy
from closedloop.select.validation import ValidationStrategy
from closedloop.select.variance import VarianceReductionStrategy

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (
    RandomStrategy, DisagreementStrategy,
    HypothesisStrategy, ValidationStrategy,
    FixedStrategy, GaudyStrategy, InfoGainStrategy, MaxResponseStrategy, AdeptStrategy,
    SynthesisStrategy, EvolutionStrategy, VarianceReductionStrategy,
)}


def strategy_params(name: str, params: dict[str, Any] | None = None) -> BaseModel:
    """The settings of the strategy called ``name``, validated (without building the strategy); a
    one-line error names the unknown strategy (listing the known ones) or the bad setting."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ClosedLoopError(
            f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}"
        ) from None
    try:
        return cls.Params(**(params or {}))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "params"
        message = error["msg"].removeprefix("Value error, ")
        raise ClosedLoopError(f"strategy {name!r}: params.{where}: {message}") from None


def make_strategy(name: str, params: dict[str, Any] | None = None) -> Strategy:
    """The strategy called ``name`` with its settings validated (:func:`strategy_params`)."""
    settings = strategy_params(name, params)  # an unknown name fails here
    return STRATEGIES[name](settings)
