"""The caption policy: how a sample's caption becomes the text trained on each step.

The Caption Template node only attaches a CaptionPolicy to the dataset. Training resolves it in
two stages: `prepare` does the static work once (tag clean-up, per-concept pruning, the template),
and `PreparedCaptions.draw` the per-step randomness (shuffle, tag dropout, caption dropout) in the
manner of kohya's sd-scripts (keep_tokens, keep_tokens_separator, *_dropout_rate).

Tag mode treats a caption as comma-separated booru-style tags; natural mode keeps it whole.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from dataclasses import dataclass, field

PLACEHOLDERS = ("trigger", "concept", "caption", "tags")
MODES = ("tags", "natural")


def _clean(tag: str) -> str:
    return " ".join(tag.split())


def tag_key(tag: str) -> str:
    # Booru tags are written both "red_hair" and "red hair", in any case: one tag for matching.
    return _clean(tag.replace("_", " ")).lower()


def split_tags(text: str) -> list[str]:
    return [t for t in (_clean(part) for part in text.split(",")) if t]


def _implied(pairs) -> dict[str, set[str]]:
    """Each tag's implied tags, followed through chains: with "german shepherd -> dog" and
    "dog -> animal", "german shepherd" also removes "animal" (booru implications are transitive)."""
    direct: dict[str, set[str]] = {}
    for tag, implied in pairs:
        direct.setdefault(tag_key(tag), set()).add(tag_key(implied))
    closure = {}
    for tag, implied in direct.items():
        seen, todo = set(), list(implied)
        while todo:
            t = todo.pop()
            if t not in seen:
                seen.add(t)
                todo.extend(direct.get(t, ()))
        if tag in seen:  # a loop would remove every tag in it
            raise ValueError(f"implications: {tag!r} implies itself through a loop")
        closure[tag] = seen
    return closure


def parse_implications(text: str) -> tuple[tuple[str, str], ...]:
    """"tag -> implied tag" lines (blank lines and # comments skipped) as implication pairs."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [_clean(p) for p in line.split("->")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"implications line {number}: {line!r} is not 'tag -> implied tag'")
        pairs.append((parts[0], parts[1]))
    return tuple(pairs)


@dataclass(frozen=True)
class CaptionPolicy:
    template: str = "{caption}"  # placeholders: {trigger} {concept} {caption} {tags}
    prefix: str = ""
    suffix: str = ""
    mode: str = "tags"  # "tags": comma-separated tags; "natural": the caption kept whole
    remove_tags: tuple[str, ...] = ()
    implications: tuple[tuple[str, str], ...] = ()  # (tag, implied): with both present, the implied goes
    prune_defining: float = 0.0  # drop tags in at least this share of a concept's images (0 = off)
    dedupe: bool = True
    shuffle: bool = False
    keep_tokens: int = 0  # the first N tokens of the final caption stay in place and are never dropped
    keep_separator: str = "|||"  # in a caption, everything before it is kept; takes precedence
    tag_dropout: float = 0.0  # per draw, each shuffleable tag is dropped with this probability
    caption_dropout: float = 0.0  # per draw, the whole caption becomes "" with this probability

    def __post_init__(self):
        # Tuples keep the policy hashable and immutable whatever sequence a node passes.
        if isinstance(self.remove_tags, str) or isinstance(self.implications, str):
            raise TypeError("remove_tags and implications must be sequences, not a string")
        for pair in self.implications:
            if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(t, str) and tag_key(t) for t in pair):
                raise ValueError(f"implications: {pair!r} is not a (tag, implied tag) pair")
        object.__setattr__(self, "remove_tags", tuple(self.remove_tags))
        object.__setattr__(self, "implications", tuple(tuple(p) for p in self.implications))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None]
        except ValueError as e:  # an unmatched brace
            raise ValueError(f"template {self.template!r}: {e}; write a literal brace as {{{{ or }}}}") from None
        unknown = [f"{{{name}}}" for name in names if name not in PLACEHOLDERS]
        if unknown:
            raise ValueError(f"template: unknown placeholder(s) {', '.join(unknown)}; "
                             f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
        for name in ("prune_defining", "tag_dropout", "caption_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {getattr(self, name)}")
        if self.keep_tokens < 0:
            raise ValueError(f"keep_tokens must be at least 0, not {self.keep_tokens}")
        _implied(self.implications)  # a loop is an error now, not at training time
        if self.mode == "natural":
            # Ignoring these silently would train something other than what was asked for.
            tag_only = [name for name, on in (
                ("shuffle", self.shuffle), ("keep_tokens", self.keep_tokens),
                ("tag_dropout", self.tag_dropout), ("prune_defining", self.prune_defining),
                ("remove_tags", self.remove_tags), ("implications", self.implications)) if on]
            if tag_only:
                raise ValueError(f"{', '.join(tag_only)} only appl{'ies' if len(tag_only) == 1 else 'y'} in tag mode, "
                                 "not natural mode")

    @property
    def is_random(self) -> bool:
        """Whether captions vary between steps."""
        return self.shuffle or self.tag_dropout > 0 or self.caption_dropout > 0


@dataclass(frozen=True)
class PreparedCaptions:
    """A dataset's captions after the static part of a policy, index-aligned with its samples."""
    policy: CaptionPolicy
    tokens: tuple[tuple[str, ...], ...]  # per sample: the final caption's tokens (natural: one)
    fixed: tuple[int, ...]  # per sample: how many leading tokens stay in place and are never dropped
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)  # concept -> tag -> images
    pruned: dict[str, tuple[str, ...]] = field(default_factory=dict)  # concept -> tags pruned

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def captions(self) -> tuple[str, ...]:
        """The static captions: what every draw gives when the policy has no randomness."""
        return tuple(", ".join(tokens) for tokens in self.tokens)

    def draw(self, index: int, generator: random.Random) -> str:
        """One step's caption for a sample; the same generator state gives the same caption."""
        policy = self.policy
        if policy.caption_dropout and generator.random() < policy.caption_dropout:
            return ""
        tokens, fixed = self.tokens[index], self.fixed[index]
        rest = list(tokens[fixed:])
        if policy.tag_dropout:
            rest = [t for t in rest if generator.random() >= policy.tag_dropout]
        if policy.shuffle:
            generator.shuffle(rest)
        return ", ".join(list(tokens[:fixed]) + rest)

    def variants(self, index: int, k: int = 8, seed: int = 0) -> list[str]:
        """k pre-drawn captions for a sample, for training to pick from with their text encodings
        cached. Repeats are kept so that picking uniformly follows the policy's odds. A policy
        without randomness gives a single-element list: every draw is the same caption."""
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        if not self.policy.is_random:
            return [self.captions[index]]
        generator = random.Random(seed * 1_000_003 + index)
        return [self.draw(index, generator) for _ in range(k)]


# Marks where one part of a composite's caption ends and the next begins while the template is applied
# (a private-use character: in no tag, and not whitespace, so split_tags keeps it as a token of its own).
PART_MARK = "\ue000"


def caption_parts(sample) -> tuple[str, ...]:
    """A sample's caption as the parts de-duplication works within: a composite's sides, else whole."""
    return tuple(getattr(sample, "caption_parts", ())) or (sample.caption,)


def _render(policy: CaptionPolicy, caption: str, trigger: str, concept: str) -> str:
    text = policy.template.format_map({"trigger": trigger, "concept": concept, "caption": caption,
                                       "tags": caption})
    joiner = ", " if policy.mode == "tags" else " "
    return joiner.join(p.strip() for p in (policy.prefix, text, policy.suffix) if p.strip())


def _final_tokens(policy: CaptionPolicy, text: str) -> tuple[tuple[str, ...], int]:
    """Kohya's keep rules on the final caption: the part before keep_separator stays in place
    (the separator itself goes), else its first keep_tokens tokens (counted after dedupe).
    De-duplication (first occurrences win, so the kept part keeps its place) works within each
    part of a composite's caption (PART_MARK between them): a tag on both sides stays on both."""
    separator = policy.keep_separator
    if separator and separator in text:
        head, tail = text.split(separator, 1)
        kept, rest = split_tags(head), split_tags(tail.replace(separator, ","))  # a second one: a comma
    else:
        kept, rest = None, split_tags(text)
    tokens, n_kept, seen = [], 0, set()
    for index, tag in enumerate((kept or []) + rest):
        if tag == PART_MARK:
            seen = set()
            continue
        if policy.dedupe:
            if tag_key(tag) in seen:
                continue
            seen.add(tag_key(tag))
        tokens.append(tag)
        n_kept += kept is not None and index < len(kept)
    if kept is None:
        return tuple(tokens), min(policy.keep_tokens, len(tokens))
    return tuple(tokens), n_kept


def prepare(policy: CaptionPolicy, dataset) -> PreparedCaptions:
    """The static part of the policy for every sample of a Dataset, done once before training."""
    if policy.mode == "natural":
        texts = [_render(policy, s.caption.strip(), dataset.trigger, s.concept) for s in dataset.samples]
        tokens = tuple((t,) if t else () for t in texts)
        return PreparedCaptions(policy, tokens, tuple(len(t) for t in tokens))

    removed = {tag_key(t) for t in policy.remove_tags}
    implied = _implied(policy.implications)
    per_sample = []
    for sample in dataset.samples:
        parts = []
        for part in caption_parts(sample):  # a composite's sides each on their own
            tags = [t for t in split_tags(part) if tag_key(t) not in removed]
            present = {tag_key(t) for t in tags}
            gone = set().union(*(implied[k] for k in present if k in implied))
            parts.append([t for t in tags if tag_key(t) not in gone])  # dedupe comes with the final caption
        per_sample.append(parts)

    # Per concept, how many images carry each tag; the first spelling seen names it.
    counts: dict[str, Counter] = {}
    names: dict[str, dict[str, str]] = {}
    images: Counter = Counter()
    for sample, parts in zip(dataset.samples, per_sample):
        tags = [t for part in parts for t in part]
        images[sample.concept] += 1
        seen = names.setdefault(sample.concept, {})
        for tag in tags:
            seen.setdefault(tag_key(tag), tag)
        counts.setdefault(sample.concept, Counter()).update({tag_key(t) for t in tags})
    tag_frequency = {c: {names[c][k]: n for k, n in counter.most_common()} for c, counter in counts.items()}

    pruned_keys: dict[str, set[str]] = {}
    if policy.prune_defining > 0:
        for concept, counter in counts.items():
            # The trigger and concept name are what the pruned tags move into: never prune them.
            protected = {tag_key(t) for t in split_tags(dataset.trigger) + split_tags(concept)}
            pruned_keys[concept] = {k for k, n in counter.items()
                                    if k not in protected and n >= policy.prune_defining * images[concept]}
    pruned = {c: tuple(names[c][k] for k, _ in counts[c].most_common() if k in keys)
              for c, keys in pruned_keys.items()}

    tokens, fixed = [], []
    for sample, parts in zip(dataset.samples, per_sample):
        drop = pruned_keys.get(sample.concept, set())
        kept_parts = (", ".join(t for t in part if tag_key(t) not in drop) for part in parts)
        caption = f", {PART_MARK}, ".join(part for part in kept_parts if part)
        t, f = _final_tokens(policy, _render(policy, caption, dataset.trigger, sample.concept))
        tokens.append(t)
        fixed.append(f)
    return PreparedCaptions(policy, tuple(tokens), tuple(fixed), tag_frequency, pruned)


def preview(policy: CaptionPolicy, dataset, first: int = 8) -> str:
    """The static captions of the first samples, each concept's 20 most frequent tags, and the
    tags pruned, for the Caption Template node to show before anything trains."""
    prepared = prepare(policy, dataset)
    total = len(prepared)
    lines = [f"Captions (first {min(first, total)} of {total}):"]
    lines += [f"  {s.concept}: {c!r}" for s, c in zip(dataset.samples[:first], prepared.captions)]
    randomness = [f"tags after the first {policy.keep_tokens} (or after {policy.keep_separator!r}) "
                  "shuffled"] if policy.shuffle else []
    randomness += [f"{name.replace('_', ' ')} {getattr(policy, name):.0%}"
                   for name in ("tag_dropout", "caption_dropout") if getattr(policy, name)]
    if randomness:
        lines.append(f"Each step: {', '.join(randomness)}")
    if "{trigger}" in policy.template and not dataset.trigger:
        lines.append("Note: the template uses {trigger} but the dataset has no trigger word")
    for concept, frequency in prepared.tag_frequency.items():
        images = sum(1 for s in dataset.samples if s.concept == concept)
        lines.append(f"Tags of {concept!r} ({images} image{'s' * (images != 1)}, top 20):")
        lines += [f"  {n:>5}  {tag}" for tag, n in list(frequency.items())[:20]]
        if concept in prepared.pruned:
            gone = ", ".join(prepared.pruned[concept]) or "none"
            lines.append(f"  pruned (in >= {policy.prune_defining:.0%} of its images): {gone}")
    return "\n".join(lines)
