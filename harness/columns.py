"""Column names of the result frames and of claim metrics: ``<prefix><dataset|task|batch>``.

One home for the prefixes that the report (`harness.report`), the paper layouts and the claims
(`harness.claims`) build and parse, e.g. ``ppl:wikitext2``, ``acc:piqa``, ``tok/s:b1``.
"""
from __future__ import annotations

__all__ = [
    "ACC_AVG", "ACC_PREFIX", "ACC_SE", "ACC_STD", "AUX_PREFIXES", "BPB_PREFIX", "BPB_STD", "PPL_HI", "PPL_LO",
    "PPL_PREFIX", "PPL_STD", "STD_PREFIX", "TOK_MAX", "TOK_MIN", "TOK_PREFIX", "ZS_AVG", "ZS_PREFIX",
]

#: Perplexity of a dataset (mean over seeds); its standard deviation over seeds; the 95%
#: bootstrap interval over evaluation windows (and seeds).
PPL_PREFIX = "ppl:"
PPL_STD, PPL_LO, PPL_HI = "ppl_std:", "ppl_lo:", "ppl_hi:"
#: Bits per byte of a perplexity evaluation (tokenizer-independent: compares model families).
BPB_PREFIX, BPB_STD = "bpb:", "bpb_std:"
#: Zero-shot accuracy of a task as a fraction; its standard deviation over seeds; lm-eval's
#: standard error; ``acc:avg`` the mean over tasks.
ACC_PREFIX = "acc:"
ACC_STD, ACC_SE = "acc_std:", "acc_se:"
ACC_AVG = ACC_PREFIX + "avg"
#: Decode tokens/s per sequence of a batch size (``tok/s:b1``): median, slowest and fastest repeat.
TOK_PREFIX, TOK_MIN, TOK_MAX = "tok/s:", "tok/s_min:", "tok/s_max:"
#: Auxiliary column prefix -> the main column prefix it qualifies.
AUX_PREFIXES = {PPL_STD: PPL_PREFIX, PPL_LO: PPL_PREFIX, PPL_HI: PPL_PREFIX, ACC_STD: ACC_PREFIX,
                ACC_SE: ACC_PREFIX, TOK_MIN: TOK_PREFIX, TOK_MAX: TOK_PREFIX, BPB_STD: BPB_PREFIX}
#: The paper layouts (`harness.report.paper`): zero-shot accuracy of a task (``acc`` or
#: ``acc_norm``, percent), their average, and the standard deviation over seeds of any column.
ZS_PREFIX = "zs:"
ZS_AVG = ZS_PREFIX + "avg"
STD_PREFIX = "std:"
