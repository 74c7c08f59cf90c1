"""Row filters such as `strategy == 'lp_ft' and best_val_kappa > 0.3`, evaluated without Python.

`DataFrame.query` resolves `@name` against the caller's variables and calls methods, so a
filter typed on the command line could run code. Here the expression is parsed with `ast`
and only a small grammar is accepted: column names, literals (numbers, strings, True, False,
None, and lists or tuples of them), comparisons (`== != < <= > >= in not in`), `and`, `or`,
`not` and parentheses. Everything else (attributes, calls, subscripts, `@` names,
arithmetic, lambdas) is refused with a message naming it. The mask is computed with pandas
operators, never with `eval`.
"""

from __future__ import annotations

import ast
import operator

import pandas as pd

from fundus_search.vocabulary import UserError

_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


class FilterError(UserError):
    """A filter expression is outside the accepted grammar or names an unknown column."""


def filter_rows(frame: pd.DataFrame, expression: str) -> pd.DataFrame:
    """Rows of `frame` for which `expression` holds.

    Raises:
        FilterError: the expression does not parse, uses anything but the grammar above, or
            names a column `frame` lacks.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise FilterError(
            f"not a valid expression ({exc.msg}); write e.g. \"strategy == 'lp_ft' and best_val_average > 0.6\""
        ) from None
    mask = _Evaluator(frame).boolean(tree.body)
    return frame[mask]


class _Evaluator:
    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def boolean(self, node: ast.AST) -> pd.Series:
        """A node that must give one boolean per row."""
        if isinstance(node, ast.BoolOp):
            masks = [self.boolean(v) for v in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            result = masks[0]
            for mask in masks[1:]:
                result = combine(result, mask)
            return result
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~self.boolean(node.operand)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Name):  # a boolean column on its own
            return self.column(node).fillna(False).astype(bool)
        raise FilterError(
            f"{_describe(node)} is not allowed; use comparisons of columns with literals, joined by and/or/not"
        )

    def compare(self, node: ast.Compare) -> pd.Series:
        result = None
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            step = self.compare_pair(left, op, right)
            result = step if result is None else result & step
            left = right
        return result

    def compare_pair(self, left: ast.AST, op: ast.cmpop, right: ast.AST) -> pd.Series:
        if isinstance(op, (ast.In, ast.NotIn)):
            values = self.literal(right)
            if not isinstance(values, (list, tuple)):
                raise FilterError(
                    f"`in` needs a list of literals, e.g. init in ['flair', 'imagenet'] (got {ast.unparse(right)})"
                )
            mask = self.column(left).isin(list(values))
            return ~mask if isinstance(op, ast.NotIn) else mask
        if type(op) not in _COMPARE:
            raise FilterError(f"operator {type(op).__name__} is not allowed; use == != < <= > >= in, not in")
        a, b = self.operand(left), self.operand(right)
        if not any(isinstance(x, pd.Series) for x in (a, b)):
            raise FilterError(f"{ast.unparse(left)} and {ast.unparse(right)} are both literals; compare a column")
        return _COMPARE[type(op)](a, b).fillna(False).astype(bool)

    def operand(self, node: ast.AST):
        return self.column(node) if isinstance(node, ast.Name) else self.literal(node)

    def column(self, node: ast.AST) -> pd.Series:
        if not isinstance(node, ast.Name):
            raise FilterError(f"{_describe(node)} is not allowed where a column name is expected")
        if node.id not in self.frame.columns:
            raise FilterError(f"unknown column {node.id!r}; use one of {', '.join(map(str, self.frame.columns))}")
        return self.frame[node.id]

    def literal(self, node: ast.AST):
        if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (bool, int, float, str))):
            return node.value
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
            and isinstance(node.operand.value, (int, float))
            and not isinstance(node.operand.value, bool)
        ):
            return -node.operand.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.literal(element) for element in node.elts]
        raise FilterError(
            f"{_describe(node)} is not allowed; only numbers, strings, True, False, None and lists of them are literals"
        )


def _describe(node: ast.AST) -> str:
    kinds = {
        ast.Attribute: "attribute access",
        ast.Call: "a function call",
        ast.Subscript: "subscripting",
        ast.Lambda: "a lambda",
        ast.BinOp: "arithmetic",
        ast.NamedExpr: "assignment",
        ast.ListComp: "a comprehension",
        ast.GeneratorExp: "a comprehension",
        ast.Dict: "a dict",
    }
    kind = next((text for cls, text in kinds.items() if isinstance(node, cls)), type(node).__name__)
    return f"{kind} ({ast.unparse(node)})"
