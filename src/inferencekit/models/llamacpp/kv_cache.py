"""The llama.cpp backend's prefix cache: which tokens each idle KV stream still holds, to reuse as prompt prefixes.

Every sequence has its own KV stream (see the package docstring). A finished sequence's stream stays
cached; a later prompt that starts with cached tokens copies that stream (`llama_memory_seq_cp`) and
computes only the rest. Streams that `score_text` read also keep their tokens' log-probabilities, so a
continuation of a scored path (a tree search's child) computes only its new tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import llama_cpp as lc
import numpy as np


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays."""
    m = min(len(a), len(b))
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


class StreamCache:
    """Cached streams of one llama.cpp context: sequence id -> the tokens its stream holds (and their log-probs).

    The copies it asks llama.cpp for run in order at the next decode, so a stream copied away and then
    overwritten is still read whole.
    """

    def __init__(self) -> None:
        self.tokens: dict[int, np.ndarray] = {}  # sequence -> the tokens its stream holds
        # sequence -> statistic ("logprob", "certainty") -> its value at each of its tokens after the first
        self.scored: dict[int, dict[str, np.ndarray]] = {}

    def clear(self) -> None:
        """Forget every stream (the context is gone)."""
        self.tokens, self.scored = {}, {}

    def forget(self, seq: int) -> None:
        self.tokens.pop(seq, None)
        self.scored.pop(seq, None)

    def longest_prefix(self, t: np.ndarray, live: Iterable[tuple[int, Sequence[int]]]) -> tuple[int, int]:
        """(length, sequence) of the longest prefix of prompt `t` held by a cached stream or a live prompt.

        Positions below a live sequence's prompt length hold the same KV as a cached prompt's. At least
        the last 2 tokens are left to compute (see `DecodeLoop._feed`); (0, -1) when nothing matches.
        """
        prefix, src = 0, -1
        for seq, tokens in [*self.tokens.items(), *live]:
            n = min(common_prefix(t, np.asarray(tokens)), len(t) - 2)
            if n > prefix:
                prefix, src = n, seq
        return prefix, src

    def clear_way(self, mem, first: int, end: int, n_seq: int) -> None:
        """Move cached streams out of sequences `first .. end - 1` into free ones above them (while any are free)."""
        free = [q for q in range(n_seq - 1, end - 1, -1) if q not in self.tokens]
        for seq in range(first, end):
            if seq in self.tokens and free:
                to = free.pop(0)
                lc.llama_memory_seq_cp(mem, seq, to, -1, -1)
                self.tokens[to] = self.tokens[seq]
                if seq in self.scored:
                    self.scored[to] = self.scored[seq]
            self.forget(seq)

    def swapped(self, hole: int, seq: int) -> None:
        """Streams `hole` and `seq` swapped contents: what `hole` held now lies in `seq`."""
        for entries in (self.tokens, self.scored):
            if hole in entries:
                entries[seq] = entries.pop(hole)
            else:
                entries.pop(seq, None)

    def retain(self, finished: Iterable[tuple[int, Sequence[int]]]) -> None:
        """Keep finished sequences' streams, each holding the given tokens, unless another holds the same."""
        kept = {tuple(t) for t in self.tokens.values()}
        for seq, tokens in finished:
            tokens = tuple(tokens)
            if tokens not in kept:
                kept.add(tokens)
                self.tokens[seq] = np.asarray(tokens)

    def store_scored(self, seq: int, tokens: Sequence[int], scored: np.ndarray, statistic: str = "logprob") -> None:
        self.tokens[seq], self.scored[seq] = np.asarray(tokens), {statistic: scored}

    def reuse_scored(
        self, mem, tokens: list[int], seq: int, first_out: int, statistic: str = "logprob"
    ) -> tuple[np.ndarray, int]:
        """Load into `seq` the longest cached prefix of `tokens` whose needed log-probabilities are known.

        Returns the log-probabilities (or the `statistic` asked for) known so far (entry i: of token i + 1;
        NaN where unknown) and the position where computing starts. Positions from `first_out` on need
        values, so a stream without them (a generation's prompt) lends at most `first_out` positions, one
        with them as many as match; at least 2 tokens are always computed (see `DecodeLoop._feed`).
        """
        t = np.asarray(tokens)
        scored = np.full(len(tokens) - 1, np.nan)
        best, src = 0, -1
        for other, cached in self.tokens.items():
            match = common_prefix(t, cached)
            n = min(match, first_out, len(tokens) - 2)
            known = self.scored.get(other, {}).get(statistic)
            if known is not None and match - 1 > first_out:  # entry i needs tokens up to i + 1 to match
                reach = min(match - 1, len(known), len(tokens) - 2)
                if not np.isnan(known[first_out:reach]).any():
                    n = reach
            if n > best:
                best, src = n, other
        if src >= 0 and src != seq:
            lc.llama_memory_seq_rm(mem, seq, -1, -1)
            lc.llama_memory_seq_cp(mem, src, seq, -1, -1)
        if src >= 0 and statistic in self.scored.get(src, {}) and best > first_out:
            scored[first_out:best] = self.scored[src][statistic][first_out:best]
        self.forget(seq)
        lc.llama_memory_seq_rm(mem, seq, best, -1)  # best is 0 when nothing matched
        return scored, best


class DrawnCertainty:
    """The self-certainty of the distributions generated tokens were drawn from, kept by the text they spell
    (`reuse_generated_kv`), so scoring a just-generated text computes nothing.

    An entry is the text of a prompt and the tokens generated after it, with the certainty of each generated
    token; a tree search's path is found through the entries of its steps (each step's prompt is the path before
    it). Kept by text, not by token: a text read back is tokenised anew and may split otherwise than the draws did
    (a step's separator drawn as two newline tokens is read back as one "\n\n" token), and the values are then
    the draws', one per drawn token. The oldest entries go first past `capacity`. The values were computed one
    token at a time, with other kernels than a prompt's: on the embedded Q4_1 model a token's value differs from a
    recomputation as a prompt by up to a few percent (a response's mean by less than 1%; see the package docstring).
    """

    def __init__(self, detokenize: Callable[[Sequence[int]], bytes], capacity: int = 16384) -> None:
        self.capacity = capacity
        self._detokenize = detokenize
        # text -> (where the prompt's text ends, each drawn token's value, where each drawn token's text ends);
        # insertion order: oldest first
        self._entries: dict[bytes, tuple[int, np.ndarray, np.ndarray]] = {}

    def remember(self, prompt: Sequence[int], generated: Sequence[int], values: Sequence[float]) -> None:
        if not generated:
            return
        head = self._detokenize(prompt)
        pieces = [self._detokenize([t]) for t in generated]
        key = head + b"".join(pieces)
        self._entries.pop(key, None)
        ends = len(head) + np.cumsum([len(p) for p in pieces])
        self._entries[key] = (len(head), np.asarray(values[: len(generated)], dtype=np.float64), ends)
        while len(self._entries) > self.capacity:
            del self._entries[next(iter(self._entries))]

    def lookup(self, tokens: Sequence[int], start: int) -> np.ndarray | None:
        """The certainty of the draws that spelled the text of `tokens[start:]` (given the text before it), one
        value per drawn token; None unless all of that text was drawn here."""
        head = self._detokenize(tokens[:start])
        text, stop = head + self._detokenize(tokens[start:]), len(head)
        parts, end = [], len(text)
        while end > stop:
            entry = self._entries.get(text[:end])
            if entry is None:
                return None
            first, values, ends = entry
            if first < stop:  # the scored prompt reaches into these draws: from the token that starts at `stop`
                at = np.flatnonzero(ends[:-1] == stop)
                if not len(at):
                    return None
                values, first = values[at[0] + 1 :], stop
            parts.append(values)
            end = first
        return np.concatenate(parts[::-1]) if parts else np.zeros(0)
