"""The strategies a protocol can name, and :func:`make_strategy`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from closedloop.errors import ClosedLoopError
from closedloop.select.hypotheses import HypothesisStrategy
from closedloop.select.proposal import ProposeStrategy
from closedloop.select.strategies import (AdeptStrategy, DisagreementStrategy, FixedStrategy, GaudyStrategy,
                                          InfoGainStrategy, MaxResponseStrategy, RandomStrategy, Strategy)
from closedloop.select.synthesis import EvolutionStrategy, SynthesisStrategy
from closedloop.select.validation import ValidationStrategy
from closedloop.select.variance import VarianceReductionStrategy

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (
    RandomStrategy, DisagreementStrategy,
    HypothesisStrategy, ValidationStrategy,
    FixedStrategy, GaudyStrategy, InfoGainStrategy, MaxResponseStrategy, AdeptStrategy,
    SynthesisStrategy, EvolutionStrategy, VarianceReductionStrategy, ProposeStrategy,
)}


def strategy_params(name: str, params: dict[str, Any] | None = None) -> BaseModel:
    """The settings of the strategy called ``name``, validated (without building the strategy), with
    those of the strategies it is made of (:meth:`~closedloop.select.strategies.Strategy.made_of`);
    a one-line error names the unknown strategy (listing the known ones) or the bad setting."""
    cls = _strategy_class(name)
    try:
        settings = cls.Params(**(params or {}))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "params"
        message = error["msg"].removeprefix("Value error, ")
        raise ClosedLoopError(f"strategy {name!r}: params.{where}: {message}") from None
    for part in cls.made_of(settings):
        where = f"strategy {name!r}: params.{part.name_field}"
        if part.name == name:
            raise ClosedLoopError(f"{where}: {name!r} cannot be a part of itself")
        try:
            strategy_params(part.name, part.params)
        except ClosedLoopError as exc:
            detail = str(exc)
            prefix = f"strategy {part.name!r}: params."
            if detail.startswith(prefix):
                raise ClosedLoopError(f"strategy {name!r}: params.{part.params_field}."
                                      f"{detail.removeprefix(prefix)}") from None
            raise ClosedLoopError(f"{where}: {detail}") from None
    return settings


def make_strategy(name: str, params: dict[str, Any] | None = None) -> Strategy:
    """The strategy called ``name`` with its settings validated (:func:`strategy_params`), and the
    strategies it is made of built the same way."""
    settings = strategy_params(name, params)  # an unknown name fails here
    cls = STRATEGIES[name]
    parts = {part.name_field: make_strategy(part.name, part.params) for part in cls.made_of(settings)}
    return cls(settings, parts) if parts else cls(settings)


def _strategy_class(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ClosedLoopError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}") from None
