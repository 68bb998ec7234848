"""Schemathesis hooks for tests/fuzz/run (loaded through SCHEMATHESIS_HOOKS).

Each valid `Idempotency-Key` the fuzzer draws gets a unique prefix. Hypothesis draws few distinct short strings,
so without it unrelated requests share keys: a `createSession` then replays an earlier creation whose session the
stateful phase has since deleted, which is what idempotency promises (the first answer, again) but reads to the
stateful checks as "a created resource is not found". Replays are tested on purpose in tests/idempotency.rs.
Keys that break the contract's rules stay as drawn, so that their refusal is still checked.
"""

import itertools
import re

import schemathesis

KEY_RULE = re.compile(r"^[!-~]([ -~]*[!-~])?$")
MAX_KEY = 255
_serial = itertools.count()


@schemathesis.hook
def map_headers(ctx, headers):
    if not headers:
        return headers
    for name in list(headers):
        if name.lower() != "idempotency-key":
            continue
        key = headers[name]
        prefix = f"fz{next(_serial)}-"
        if isinstance(key, str) and KEY_RULE.match(key) and len(prefix) + len(key) <= MAX_KEY:
            headers[name] = prefix + key
    return headers
