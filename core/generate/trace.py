"""Records of what decoding saw: per step, the top candidates and their probabilities before and
after each logits processor, the chosen token and the entropy; for beam search, the tree of
hypotheses kept, finished and pruned at each step.

Off by default: `stream_tokens(..., trace=Trace())` and `beam_search(..., trace=...)` fill one;
without it decoding runs exactly as before. Probabilities are softmax of the scores after each
stage ("model" is the raw logits; beam search's are log-probabilities, whose softmax is the same).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.generate.logits import Processors, SettingsError

MAX_TOP_N = 20  # as OpenAI's top_logprobs
BANNED = -9999.0  # OpenAI's log-probability for a token with none


def check_top_n(top_n: object) -> int:
    """A valid number of alternatives to record per step, or SettingsError."""
    if isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= MAX_TOP_N:
        raise SettingsError(
            f"logprobs must be a whole number from 1 to {MAX_TOP_N}, got {top_n!r}."
        )
    return top_n


@dataclass(frozen=True)
class Stage:
    """The next-token distribution after one stage: "model", then each processor's class name."""

    name: str
    top: tuple[tuple[int, float], ...]  # (token id, probability), most probable first
    chosen: float  # log-probability of the token finally chosen (-inf: this stage banned it)
    entropy: float  # nats
    support: int  # tokens with nonzero probability


@dataclass(frozen=True)
class Step:
    """One decoded token and the distribution at every stage it went through."""

    token: int
    stages: tuple[Stage, ...]

    @property
    def logprob(self) -> float:
        """Log-probability of the token in the distribution it was drawn from (the last stage)."""
        return self.stages[-1].chosen

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)

    @property
    def entropy(self) -> float:
        return self.stages[-1].entropy


@dataclass
class BeamNode:
    """A hypothesis in the beam tree: `token` appended to `parent`, with its summed score.

    status: "running" (one of the beams kept open), "finished" (entered the finished list) or
    "pruned" (among the best candidates of its step, but neither kept nor finished)."""

    id: int
    parent: int | None
    step: int
    token: int | None
    score: float
    status: str
    record: Step | None = None


@dataclass(frozen=True)
class _Rows:
    """Stage summaries for a batch of rows, before the chosen tokens are known."""

    names: list[str]
    logp: torch.Tensor  # (S, B, V) log-probabilities per stage
    tops: list[list[tuple[tuple[int, float], ...]]]  # [stage][row]
    entropies: list[list[float]]  # [stage][row]
    supports: list[list[int]]


def _summarise(stages: list[tuple[str, torch.Tensor]], top_n: int) -> _Rows:
    # every stage at once, (S, B, V): a handful of tensor ops per step, not a handful per stage
    logp = torch.log_softmax(torch.stack([x.float() for _, x in stages]), dim=-1)
    p = logp.exp()
    values, ids = torch.topk(p, min(top_n, p.shape[-1]), dim=-1)  # (S, B, n)
    tops = [
        [tuple(zip(i, v, strict=True)) for i, v in zip(s_ids, s_vals, strict=True)]
        for s_ids, s_vals in zip(ids.tolist(), values.tolist(), strict=True)
    ]
    # -sum p log p, with banned tokens' 0 * -inf taken as 0 (clamping is cheaper than entr)
    entropies = (-(p * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(-1)).tolist()  # (S, B)
    supports = (p > 0).sum(-1).tolist()
    return _Rows([name for name, _ in stages], logp, tops, entropies, supports)


def _record(rows: _Rows, row: int, token: int) -> Step:
    chosen = rows.logp[:, row, token].tolist()  # (S,)
    stages = tuple(
        Stage(name, rows.tops[s][row], chosen[s], rows.entropies[s][row], rows.supports[s][row])
        for s, name in enumerate(rows.names)
    )
    return Step(token, stages)


class Trace:
    """Filled by decoding when passed as `trace=`: `steps` (one per token of the answer) and, for
    beam search, `nodes` (the tree; node 0 is the prompt) and `best` (the answer's last node)."""

    def __init__(self, top_n: int = 10) -> None:
        self.top_n = check_top_n(top_n)
        self.nodes: list[BeamNode] = []
        self._steps: list[Step] = []
        self._pending: _Rows | None = None
        self._running: list[int] = []
        self._finished: list[int | None] = []
        self._finished_mask: list[bool] = []

    # -- hooks called by decoding ----------------------------------------------------------------

    def process(
        self, processors: Processors, input_ids: torch.Tensor, scores: torch.Tensor
    ) -> torch.Tensor:
        """Apply the processors in order, as `Processors.__call__`, keeping every stage."""
        stages = [("model", scores)]
        for processor in processors:
            scores = processor(input_ids, scores)
            stages.append((type(processor).__name__, scores))
        self._pending = _summarise(stages, self.top_n)
        return scores

    def chose(self, token: int) -> None:
        """The token picked from the last processed row (one-row decoding)."""
        self._steps.append(_record(self._take(), 0, token))

    def beam_step(
        self,
        origin: torch.Tensor,
        token: torch.Tensor,
        scores: torch.Tensor,
        alive: torch.Tensor,
        top: torch.Tensor,
        finished_mask: torch.Tensor,
    ) -> None:
        """One beam step: candidates (`origin` beam, `token`, summed `scores`), the indices of those
        kept running (`alive`), and the finished list's new order over old + candidates (`top`)."""
        rows = self._take()
        nb = len(alive)
        if not self.nodes:  # the prompt; every beam starts there
            self.nodes.append(BeamNode(0, None, -1, None, 0.0, "running"))
            self._running, self._finished = [0] * nb, [None] * nb
        step = self.nodes[-1].step + 1
        ids = []
        for r, t, s in zip(origin.tolist(), token.tolist(), scores.tolist(), strict=True):
            node = BeamNode(len(self.nodes), self._running[r], step, t, s, "pruned")
            node.record = _record(rows, r, t)
            self.nodes.append(node)
            ids.append(node.id)
        for i in alive.tolist():
            self.nodes[ids[i]].status = "running"
        pool = self._finished + ids
        self._finished = [pool[i] for i in top.tolist()]
        self._finished_mask = finished_mask.tolist()
        for node_id, ok in zip(self._finished, self._finished_mask, strict=True):
            if ok and self.nodes[node_id].step == step:
                self.nodes[node_id].status = "finished"
        self._running = [ids[i] for i in alive.tolist()]

    def _take(self) -> _Rows:
        if self._pending is None:
            raise RuntimeError("Trace.process must run before a token is chosen.")
        rows, self._pending = self._pending, None
        return rows

    # -- reading it --------------------------------------------------------------------------------

    @property
    def best(self) -> int | None:
        """Beam search: the node the answer ends at (as `BeamResult.best` picks it)."""
        done = [n for n, ok in zip(self._finished, self._finished_mask, strict=True) if ok]
        if done:
            return done[0]
        return self._running[0] if self._running else None

    def path(self, node_id: int) -> list[BeamNode]:
        """The nodes from the first token to `node_id` (the prompt node left out)."""
        out = []
        node: BeamNode | None = self.nodes[node_id]
        while node is not None and node.parent is not None:
            out.append(node)
            node = self.nodes[node.parent]
        return out[::-1]

    @property
    def steps(self) -> list[Step]:
        """One record per answer token: decoding's own, or the best beam's path."""
        best = self.best
        if best is None:
            return list(self._steps)
        return [node.record for node in self.path(best) if node.record is not None]

    @property
    def tokens(self) -> list[int]:
        return [s.token for s in self.steps]


def logprobs_json(steps: Sequence[Step], tokenizer, top_n: int) -> list[dict]:
    """OpenAI-style `logprobs.content`: per token its text, log-probability and `top_n`
    alternatives, all in the distribution it was drawn from; `stages` adds each processor's
    (a token a processor banned gets OpenAI's -9999.0: JSON has no -inf)."""

    def text(token_id: int) -> str:
        return tokenizer.decode([token_id])

    def alternatives(stage: Stage) -> list[dict]:
        return [
            {"token": text(t), "id": t, "logprob": math.log(p)}
            for t, p in stage.top[:top_n]
            if p > 0
        ]

    return [
        {
            "token": text(step.token),
            "id": step.token,
            "logprob": step.logprob,
            "top_logprobs": alternatives(step.stages[-1]),
            "stages": [
                {"name": s.name, "logprob": max(s.chosen, BANNED), "top_logprobs": alternatives(s)}
                for s in step.stages
            ],
        }
        for step in steps
    ]
