"""Cross-checks of validated rig and protocol files against the registries they name and each other.

:mod:`closedloop.config` is the schema alone; what needs the strategy registry, the neuron
models, the stimulus families or both files at once (a strategy's settings, a neuron kind's
parameters, a stimulus set's size, the image patch on the rig's screen) is checked here, where a
session opens and before anything is created or started. Every error is one line naming the file
and the field. A replay, which shows nothing and renders no pool, checks what it uses
(:func:`check_strategy`, :func:`check_rig`).
"""

from __future__ import annotations

from closedloop.config import POOL_BYTES, Protocol, Rig
from closedloop.errors import ClosedLoopError


def _where(what: str, config: Protocol | Rig, field: str) -> str:
    return f"{what} file {config.source}: field '{field}'"


def check_strategy(protocol: Protocol) -> None:
    """Refuse a protocol whose strategy or strategy settings are unknown or out of range."""
    from closedloop.select.registry import strategy_params

    try:
        strategy_params(protocol.selection.strategy, protocol.selection.params)
    except ClosedLoopError as exc:
        raise ClosedLoopError(f"{_where('protocol', protocol, 'selection')}: {exc}") from None


def check_pool(protocol: Protocol) -> int:
    """Refuse a protocol whose pool names an unknown family or a stimulus set that does not load
    or holds more than ``POOL_LIMIT`` images; return how many images the pool renders at most."""
    from closedloop.stimuli import get_family, load_stimulus_set

    if protocol.pool.set is not None:
        try:
            return load_stimulus_set(protocol.pool.set).size()
        except ClosedLoopError as exc:
            raise ClosedLoopError(f"{_where('protocol', protocol, 'pool.set')}: {exc}") from None
    for name in protocol.pool.families:
        try:
            get_family(name)
        except ClosedLoopError as exc:
            raise ClosedLoopError(f"{_where('protocol', protocol, f'pool.families.{name}')}: {exc}") from None
    images = sum(protocol.pool.families.values())
    if images == 0:
        raise ClosedLoopError(f"{_where('protocol', protocol, 'pool.families')}: the pool is empty")
    return images


def check_protocol(protocol: Protocol) -> int:
    """Everything a protocol needs checked beyond its schema; how many images its pool renders at most."""
    check_strategy(protocol)
    return check_pool(protocol)


def check_rig(rig: Rig) -> None:
    """Refuse a simulated rig whose neurons take parameters their kind does not know, or out of range."""
    from closedloop.simulate.neurons import check_params

    for k, neuron in enumerate(rig.simulation.neurons if rig.simulation else []):
        try:
            check_params(neuron)
        except ValueError as exc:
            raise ClosedLoopError(f"{_where('rig', rig, f'simulation.neurons.{k}')}: {exc}") from None


def check_session(protocol: Protocol, rig: Rig) -> None:
    """Everything a session checks before it creates its directory or starts a process.

    Beyond :func:`check_rig` and :func:`check_protocol`: the image patch is at least
    ``MIN_PATCH_PX`` pixels and on the rig's screen, the rendered pool (images x side^2 x 3
    bytes) fits ``POOL_BYTES``, and the held-out images leave a decision's batch of candidates.
    """
    from closedloop.present.geometry import Layout, patch_problem

    check_rig(rig)
    images = check_protocol(protocol)
    problem = patch_problem(rig.display, protocol.stimulus)
    if problem is not None:
        raise ClosedLoopError(f"{_where('protocol', protocol, 'stimulus')}: {problem} (rig file {rig.source})")
    side = Layout.of(rig.display, protocol.stimulus, protocol.trial).patch_px
    if images * side * side * 3 > POOL_BYTES:
        raise ClosedLoopError(
            f"{_where('protocol', protocol, 'pool')}: {images} images of {side}x{side} px take "
            f"{images * side * side * 3 / 2**30:.1f} GiB, more than the {POOL_BYTES / 2**30:g} GiB a pool may "
            f"(fewer images, or a smaller stimulus.size_deg)")
    if images - protocol.heldout.images < protocol.selection.batch:
        raise ClosedLoopError(f"{_where('protocol', protocol, 'heldout.images')}: {protocol.heldout.images} "
                              f"held-out images leave fewer candidates than a decision's "
                              f"{protocol.selection.batch} in a pool of {images}")
