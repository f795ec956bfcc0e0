"""The weights of a compiled model, by the model's own names, one tensor per model tensor.

Each stage module holds the weights its nodes read, under the captured graph's attribute names
(``Captured.attr_sources`` maps them to the model's ``state_dict`` keys). A weight two stages
read (GPT-2's token embedding, tied to its LM head) is captured once per stage; ``tie``
makes every stage attribute of one model tensor point at one ``nn.Parameter`` (or buffer), so
in-process autograd sums the gradients of its uses, an optimizer steps it once, and the
stages cannot drift apart; with ``share`` that one tensor is the model's own (the
torch.compile backend: the user's optimizer steps the user's parameters). ``StageWeights`` then answers ``named_parameters``, ``state_dict``
(the model's keys, tied keys included, as ``model.state_dict()`` has them) and
``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from ..errors import InputError
from ..ir.stage_module import StageModule

__all__ = ["StageWeights"]


class StageWeights:
    """The stages' weights under the model's ``state_dict`` keys (see the module doc)."""

    def __init__(
        self,
        stages: Sequence[StageModule],
        attr_sources: Mapping[str, str],
        model_state: Mapping[str, torch.Tensor],
        share: bool = False,
    ) -> None:
        """``share``: the stages use the model's own tensors (training steps the model)."""
        self.keys = list(model_state)  # the model's own order
        owner = {id(t): key for key, t in reversed(list(model_state.items()))}
        canonical = {key: owner[id(t)] for key, t in model_state.items()}  # tied -> first key
        self._tensors: dict[str, torch.Tensor] = {}
        if share:
            self._tensors = {key: model_state[key] for key in set(canonical.values())}
        for stage in stages:
            _tie(stage.module, attr_sources, canonical, self._tensors)
        self._canonical = canonical
        self._sources = dict(attr_sources)

    def stage_keys(self, module: torch.nn.Module) -> dict[str, str]:
        """A stage module's weight attributes -> the model keys they are (tied: the first key),
        saved in plan.json for the distributed trainer (``weight_keys``)."""
        own: dict[str, torch.Tensor] = dict(module.named_parameters(recurse=False, remove_duplicate=False))
        own |= dict(module.named_buffers(recurse=False, remove_duplicate=False))
        sources = {attr: self._sources.get(attr) for attr in own}
        return {a: self._canonical[s] for a, s in sources.items() if s in self._canonical}

    def expand(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` under canonical keys (a tied weight once) -> every model key, in the
        model's order (what ``state_dict`` gives)."""
        return {k: state[self._canonical[k]] for k in self.keys if self._canonical[k] in state}

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for key in self.keys:
            tensor = self._tensors.get(key)
            if isinstance(tensor, torch.nn.Parameter) and self._canonical[key] == key:
                yield key, tensor

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's keys (tied ones too) with the stages' tensors, detached."""
        out = {}
        for key in self.keys:
            tensor = self._tensors.get(self._canonical[key])
            if tensor is not None:
                out[key] = tensor.detach()
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy ``state`` (the model's keys) into the stages' tensors, in place."""
        missing = [k for k in self.state_dict() if k not in state]
        if missing:
            raise InputError(f"state_dict lacks {len(missing)} key(s) the stages hold, e.g. {missing[:3]}")
        with torch.no_grad():
            for key in self.state_dict():
                self._tensors[self._canonical[key]].copy_(state[key])


def _tie(
    module: torch.nn.Module,
    attr_sources: Mapping[str, str],
    canonical: Mapping[str, str],
    tensors: dict[str, torch.Tensor],
) -> None:
    """Point ``module``'s weights at the tensors already seen for their model tensors."""
    own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    for attr, tensor in own.items():
        source = attr_sources.get(attr)
        if source is None or source not in canonical:
            continue  # a constant the export made, not a model weight
        key = canonical[source]
        seen = tensors.get(key)
        if seen is None:
            tensors[key] = tensor
        elif seen is not tensor:
            if seen.shape != tensor.shape:
                raise InputError(f"stage weight {attr} ({tuple(tensor.shape)}) is {key} of shape {tuple(seen.shape)}")
            setattr(module, attr, seen)  # nn.Module files it as a parameter or a buffer
