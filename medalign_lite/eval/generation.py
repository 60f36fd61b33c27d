"""Natural-language-generation metrics for reports: BLEU-1..4, METEOR, ROUGE-L, CIDEr.

The scorers are ``pycocoevalcap`` 1.2's, the standard of R2Gen, R2GenGPT and their successors
(``research/alta-s2d-report-eval.md`` §3.1): corpus BLEU (``closest`` reference length),
METEOR 1.5 (Java), ROUGE-L (LCS F-measure, β = 1.2) and CIDEr-D (IDF from the references, ×10).

Tokenisation (default ``"r2gen"``, pure Python, applied to references and hypotheses alike), in
the spirit of R2Gen's report cleaning (our own rules, documented here):

1. lower-case; drop quotes and apostrophes ("patient's" → "patients");
2. split into sentences at ``.``, ``?``, ``!`` or ``;`` followed by a space or the end; drop list
   numbering (a sentence that is only "1" or "12", or a leading "2) ");
3. inside a sentence keep tokens ``[a-z0-9]+`` possibly joined by ``-`` or ``.`` ("x-xxxx",
   "1.5"); every other character is punctuation and is removed;
4. join sentences with " . " and end with " ." — the sentence period is kept as a token, as in
   R2Gen's cleaned reports; ``keep_periods=False`` drops it too.

``tokenizer="ptb"`` uses pycocoevalcap's Stanford PTBTokenizer instead (COCO-caption style). It is
a Java program too; without Java it warns and falls back to ``"r2gen"``. Scores of the two
tokenisations are not comparable; say which one a table used.

METEOR needs ``java`` on the PATH (OpenJDK ≥ 8). When Java is missing, METEOR is skipped with a
``warnings.warn`` and the ``"METEOR"`` key is **absent** — never estimated. SPICE is not computed
(it downloads Stanford CoreNLP models).

Notes: CIDEr's IDF comes from the reference corpus, so one reference–hypothesis pair scores 0
(every n-gram has document frequency 1 of 1); report CIDEr on a test set, not per sample.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import warnings
from collections.abc import Sequence
from typing import Literal

_NUMBERING = re.compile(r"^\s*\(?\d{1,2}\)\s+")        # "2) " opening a sentence
_LIST_NUMBER = re.compile(r"\d{1,2}")                    # "2." split off as its own sentence
_SENTENCE_END = re.compile(r"[.?!;]+(?:\s+|$)")
_TOKEN = re.compile(r"[a-z0-9]+(?:[-.][a-z0-9]+)*")

METRIC_KEYS: tuple[str, ...] = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")
"""Result keys, in the order papers tabulate them (COCO-caption / R2Gen names)."""


@functools.lru_cache(maxsize=1)
def java_available() -> bool:
    """True when a working ``java`` is on the PATH (checked once per process)."""
    exe = shutil.which("java")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-version"], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def clean_report(text: str, keep_periods: bool = True) -> str:
    """R2Gen-style cleaning of one report to space-separated lower-case tokens (see module doc).

    >>> clean_report("1. Heart size is normal.  2. No pleural effusion, or pneumothorax!")
    'heart size is normal . no pleural effusion or pneumothorax .'
    """
    text = text.lower().replace("'", "").replace('"', "").replace("`", "")
    sentences = []
    for sentence in _SENTENCE_END.split(text):     # a handful of sentences per report
        tokens = _TOKEN.findall(_NUMBERING.sub("", sentence))
        if tokens and not (len(tokens) == 1 and _LIST_NUMBER.fullmatch(tokens[0])):
            sentences.append(" ".join(tokens))
    if not sentences:
        return ""
    if keep_periods:
        return " . ".join(sentences) + " ."
    return " ".join(sentences)


def _as_reference_lists(references: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def _ptb_tokenize(refs: list[list[str]], hyps: list[str]) -> tuple[dict, dict]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": h}] for i, h in enumerate(hyps)})
    return gts, res


def _meteor(gts: dict, res: dict) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        with scorer.lock:                          # stop the JVM now, not at garbage collection
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()
    return float(score)


def nlg_metrics(references: Sequence[str] | Sequence[Sequence[str]], hypotheses: Sequence[str],
                tokenizer: Literal["r2gen", "ptb"] = "r2gen", keep_periods: bool = True,
                meteor: bool = True) -> dict[str, float]:
    """Corpus-level NLG metrics of generated reports against references.

    Args:
        references: one reference per hypothesis, or a list of references per hypothesis.
        hypotheses: the generated reports, same length.
        tokenizer: ``"r2gen"`` (pure Python, default) or ``"ptb"`` (Stanford PTB, needs Java).
        keep_periods: r2gen tokenisation keeps sentence periods as tokens (R2Gen convention).
        meteor: compute METEOR (needs Java; skipped with a warning when absent).

    Returns:
        ``{"BLEU_1" … "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"}`` as floats in the scorers' own
        scales (BLEU / METEOR / ROUGE-L in [0, 1], CIDEr in [0, 10]); ``"METEOR"`` is absent when
        it was not computed.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs = _as_reference_lists(references)
    hyps = list(hypotheses)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references for {len(hyps)} hypotheses")
    if not hyps:
        raise ValueError("no hypotheses to score")
    if any(len(r) == 0 for r in refs):
        raise ValueError("every hypothesis needs at least one reference")
    if tokenizer == "ptb" and not java_available():
        warnings.warn("PTBTokenizer needs Java, which was not found: using the pure-Python "
                      "'r2gen' tokenisation instead", RuntimeWarning, stacklevel=2)
        tokenizer = "r2gen"
    if tokenizer == "ptb":
        gts, res = _ptb_tokenize(refs, hyps)
    elif tokenizer == "r2gen":
        gts = {i: [clean_report(r, keep_periods) for r in rs] for i, rs in enumerate(refs)}
        res = {i: [clean_report(h, keep_periods)] for i, h in enumerate(hyps)}
    else:
        raise ValueError(f"tokenizer must be 'r2gen' or 'ptb', got {tokenizer!r}")

    out: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"BLEU_{n + 1}": float(b) for n, b in enumerate(bleu)})
    if meteor:
        if java_available():
            out["METEOR"] = _meteor(gts, res)
        else:
            warnings.warn("METEOR skipped: it runs the METEOR 1.5 jar and Java was not found "
                          "(install a JRE, e.g. openjdk-17-jre-headless)", RuntimeWarning, stacklevel=2)
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {k: out[k] for k in METRIC_KEYS if k in out}
