"""Less CPU per request in the local AWS, with the same answers.

moto redoes, on every request, work whose result cannot have changed since the last
one: it scans every account's access keys to find the caller's account, parses the
same condition and update expressions again (up to three times within one
``TransactWriteItems``), lists its own package directory to route a request, and
lists a response class's methods (the HTTP layer's repeats: fast_http). Each patch
below keeps moto's own code for the answer and only remembers a result keyed by
everything it depends on; its docstring says what moto does, what is done instead,
and why the answer is the same.

``install`` applies them all, idempotently, in the server's process before it serves.
"""

from __future__ import annotations

import json
from typing import Any

#: Parsed expressions kept; a request's repeats hit, and most expression texts recur.
_CACHE_SIZE = 512


#: UpdateExpression text -> its syntax tree, as moto's parser made it; and id -> tree
#: (each entry holds its tree, so the id stays that tree's).
_UPDATE_TREES: dict[str, Any] = {}
_UPDATE_TREES_BY_ID: dict[int, Any] = {}


def _kept_update_tree(tree: Any) -> bool:
    """Whether ``tree`` is a syntax tree kept by ``_parse_update_expressions_once``."""
    return _UPDATE_TREES_BY_ID.get(id(tree)) is tree


def install() -> None:
    """Apply every patch of this module (each once)."""
    _index_access_keys()
    _parse_update_expressions_once()
    _parse_conditions_once()
    _remember_routing()
    _map_each_traverser_once()
    _check_each_update_expression_once()
    _load_service_models()
    _pick_dict_attributes_once()


#: The services whose requests moto parses from botocore's service model (``parse_parameters``)
#: among those the broker and the local scenario call.
_MODEL_PARSED_SERVICES = ("dynamodb", "sts", "iam")


def _load_service_models() -> None:
    """Load, when the server starts, the service models moto would load on a service's first request.

    moto parses the requests of some services (DynamoDB, STS, IAM) with botocore's model of
    the service, read from its JSON on first use and kept for the process (``get_service_model``
    is cached). Reading it when the server starts rather than inside some request changes no
    answer; it keeps a one-off cost out of the requests that happen to come first.
    """
    from moto.core.utils import get_service_model

    for service in _MODEL_PARSED_SERVICES:
        get_service_model(service)


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_SIZE:
        del cache[next(iter(cache))]  # the oldest entry
    cache[key] = value


def _index_access_keys() -> None:
    """Find the account of a request's access key without scanning every account.

    moto (``moto.iam.models.get_account_id_from``) answers, on every request, by
    looking the key up in the IAM backend of every account and every partition (six),
    creating those backends on the way, and falls back to the default account. With a
    hundred accounts assumed into, that is hundreds of lookups per request, and the
    broker's own credentials (unknown to IAM) always take the full scan.

    Here a key found by that scan is remembered with its account and partition; the
    next time it is only checked to be still there (a deleted key, or a reset, sends it
    back to the scan). A key not found is remembered as not found until IAM creates a
    key of that id (``create_access_key`` and ``create_temp_access_key``, the only ways
    keys are added, forget it). The answer is the scan's: moto's key ids encode their
    account (``generate_access_key_id_from_account_id``), so a key is held by one
    account, the one the scan finds first.
    """
    from moto.iam import models as iam

    if getattr(iam.get_account_id_from, "_indexed", False):
        return
    scan = iam.get_account_id_from
    found: dict[str, tuple[str, str]] = {}  # access key -> (account, partition)
    missing: dict[str, bool] = {}  # access keys no account holds

    def holder(access_key: str, account_id: str) -> str | None:
        account = dict.get(iam.iam_backends, account_id)  # without creating it
        for partition in iam.PARTITION_NAMES:
            backend = dict.get(account, partition) if account is not None else None
            if backend is not None and access_key in backend.access_keys:
                return str(partition)
        return None

    def get_account_id_from(access_key: str) -> str:
        known = found.get(access_key)
        if known is not None:
            account = dict.get(iam.iam_backends, known[0])
            backend = dict.get(account, known[1]) if account is not None else None
            if backend is not None and access_key in backend.access_keys:
                return known[0]
            del found[access_key]
        if access_key in missing:
            return str(iam.DEFAULT_ACCOUNT_ID)
        account_id = scan(access_key)
        partition = holder(access_key, account_id)
        if partition is not None:
            found[access_key] = (account_id, partition)
            missing.pop(access_key, None)
        else:
            _bounded_put(missing, access_key, True)
        return str(account_id)

    def forgetting(create: Any) -> Any:
        def created(self: Any, *args: Any, **kwargs: Any) -> Any:
            key = create(self, *args, **kwargs)
            missing.pop(key.access_key_id, None)
            return key

        return created

    iam.IAMBackend.create_access_key = forgetting(iam.IAMBackend.create_access_key)  # type: ignore[method-assign]
    iam.IAMBackend.create_temp_access_key = forgetting(iam.IAMBackend.create_temp_access_key)  # type: ignore[method-assign]
    get_account_id_from._indexed = True  # type: ignore[attr-defined]
    iam.get_account_id_from = get_account_id_from


def _parse_update_expressions_once() -> None:
    """Parse each UpdateExpression text once.

    moto parses an UpdateExpression into a syntax tree for every use: in the request
    handler (to list the names it uses) and again in the backend, for each item of a
    transaction. The tree depends on the text alone (values and names are resolved
    later, by validators working on their own deep copy of it), and nothing changes
    the tree moto hands out: the handler only reads it. So the tree of a text is kept
    and handed out again; a text moto refuses is not kept, and is refused again.
    """
    from moto.dynamodb.parsing import expressions

    parser = expressions.UpdateExpressionParser  # type: ignore[attr-defined]
    if getattr(parser.make, "_once", False):
        return
    make = parser.make
    trees = _UPDATE_TREES

    def cached_make(cls: Any, expression_str: str) -> Any:
        tree = trees.get(expression_str)
        if tree is None:
            tree = make(expression_str)
            _bounded_put(trees, expression_str, tree)
            _bounded_put(_UPDATE_TREES_BY_ID, id(tree), tree)
        return tree

    cached_make._once = True  # type: ignore[attr-defined]
    parser.make = classmethod(cached_make)


def _parse_conditions_once() -> None:
    """Parse a condition (or filter) expression once per text, names and values.

    moto builds a ``ConditionExpressionParser`` and parses the expression into an
    operator tree for every use: in a ``TransactWriteItems`` each item's condition is
    parsed three times (the handler's check, the transaction's check, the write's).
    The tree depends only on the text, the names and the values (moto resolves both
    while parsing), so it is kept under those three (names and values as their JSON
    text, in their own order) with what the parser records (the names and values it
    found), and handed out again: evaluating a tree against an item changes nothing in
    it. The values the tree refers to are a private copy made from that JSON text, so
    no caller's later change to its own dictionaries can reach a kept tree. Names or
    values that are not plain JSON (they are, parsed from a request's JSON body; the
    copy must equal them), and expressions moto refuses, are not kept.
    """
    from moto.dynamodb.comparisons import ConditionExpressionParser

    if getattr(ConditionExpressionParser.parse, "_once", False):
        return
    parse = ConditionExpressionParser.parse
    parsed: dict[tuple[str, str, str], tuple[Any, list[str], list[str]]] = {}

    def cached_parse(self: Any) -> Any:
        if not self.condition_expression:
            return parse(self)
        try:
            names = json.dumps(self.expression_attribute_names)
            values = json.dumps(self.expression_attribute_values)
        except (TypeError, ValueError):
            return parse(self)
        key = (self.condition_expression, names, values)
        hit = parsed.get(key)
        if hit is None:
            own_names, own_values = json.loads(names), json.loads(values)
            if own_names != self.expression_attribute_names or own_values != self.expression_attribute_values:
                return parse(self)  # not plain JSON (tuples, keys that are not strings)
            own = ConditionExpressionParser(self.condition_expression, own_names, own_values)
            op = parse(own)
            hit = (op, list(own.expr_attr_names_found), list(own.expr_attr_values_found))
            _bounded_put(parsed, key, hit)
        op, names_found, values_found = hit
        self.expr_attr_names_found.extend(names_found)
        self.expr_attr_values_found.extend(values_found)
        return op

    cached_parse._once = True  # type: ignore[attr-defined]
    ConditionExpressionParser.parse = cached_parse  # type: ignore[method-assign]


def _remember_routing() -> None:
    """Route a request and find its action without listing directories and classes each time.

    moto's dispatcher asks, for every request, whether the service host is the name of
    one of moto's subpackages, by listing moto's package directory (``os.listdir`` and
    an ``isdir`` per entry); and the response class lists its own methods
    (``inspect.getmembers``) to check that the action is one of them. The directory and
    the classes do not change while the server runs (the server's patches are all
    installed before it starts), so each list is made once; the dispatcher and the
    action check then answer from it exactly as from a fresh listing.
    """
    from moto import backends
    from moto.core import responses

    if getattr(backends.list_of_moto_modules, "_once", False):
        return
    modules = tuple(backends.list_of_moto_modules())

    def list_of_moto_modules() -> Any:
        return modules

    list_of_moto_modules._once = True  # type: ignore[attr-defined]
    backends.list_of_moto_modules = list_of_moto_modules

    method_names = responses.method_names_from_class
    by_class: dict[Any, list[str]] = {}

    def method_names_from_class(clazz: object) -> list[str]:
        names = by_class.get(clazz)
        if names is None:
            names = by_class[clazz] = method_names(clazz)
        return list(names)

    responses.method_names_from_class = method_names_from_class


def _map_each_traverser_once() -> None:
    """Build an update-expression processor's node map once per processor, not per node.

    moto's ``DepthFirstTraverser`` (every validator and processor of an UpdateExpression
    is one) asks ``_processing_map()`` for a fresh dictionary of node classes to bound
    methods twice for every node it visits. Each processor builds that dictionary from
    constants and its own bound methods, so it is the same every time for a given
    processor: here it is built on the first visit and kept on the processor (a new
    processor, made for every request, builds its own). The traversal then visits and
    transforms the same nodes in the same order.
    """
    from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser  # type: ignore[attr-defined]

    if getattr(DepthFirstTraverser.process, "_once", False):
        return

    def processing_map(self: Any) -> dict[Any, Any]:
        kept: dict[Any, Any] | None = self.__dict__.get("_fast_moto_map")
        if kept is None:
            kept = self.__dict__["_fast_moto_map"] = self._processing_map()
        return kept

    def nodes_to_be_processed(self: Any) -> tuple[Any, ...]:
        kept: tuple[Any, ...] | None = self.__dict__.get("_fast_moto_nodes")
        if kept is None:
            kept = self.__dict__["_fast_moto_nodes"] = tuple(processing_map(self).keys())
        return kept

    def process(self: Any, node: Any) -> Any:
        for class_key, processor in processing_map(self).items():
            if isinstance(node, class_key):
                return processor(node)
        return None

    process._once = True  # type: ignore[attr-defined]
    DepthFirstTraverser.nodes_to_be_processed = nodes_to_be_processed
    DepthFirstTraverser.process = process


def _check_each_update_expression_once() -> None:
    """Copy a kept update tree cheaply, and run its value-independent checks once.

    moto validates an UpdateExpression by deep-copying its syntax tree and running ten
    processors over the copy. The first three only check the tree against the
    attribute names and the table's key attributes (no more than one SET, ADD or
    REMOVE clause; no overlapping paths; no key attribute updated): each either raises
    or hands the tree on unchanged, and none depends on the values or the item. For a
    tree kept by ``_parse_update_expressions_once`` (the same text), with the same
    names and key attributes, those three are run once: after they passed, they are
    skipped, and the seven that resolve values and the item's attributes run as
    before, in the same order, on the same copy. A check that raised is run again next
    time (and raises again). The copy itself is made by unpickling the kept tree
    (pickled once) instead of ``copy.deepcopy``: the tree holds only its nodes (plain
    objects), lists, strings and numbers, which both rebuild the same way (the tree is
    checked for that when it is pickled; any other tree is deep-copied as before).
    """
    import pickle

    from moto.dynamodb.parsing import validators
    from moto.dynamodb.parsing.ast_nodes import Node  # type: ignore[attr-defined]

    validator = validators.UpdateExpressionValidator
    if getattr(validator.validate, "_once", False):
        return
    checks = (
        validators.ActionCountValidator,
        validators.OverlappingPathsValidator,
        validators.UpdateHashRangeKeyValidator,
    )
    init = validators.Validator.__init__
    pickled: dict[int, tuple[Any, bytes | None]] = {}  # id(tree) -> (tree, its pickle or None)
    passed: dict[tuple[int, str, tuple[str, ...]], Any] = {}  # (id(tree), names, keys) -> tree

    def plain(value: Any) -> bool:
        if isinstance(value, list):
            return all(plain(v) for v in value)
        if type(value) in (str, int, float, bool, type(None)):
            return True
        return isinstance(value, Node) and all(k == "parent" or plain(v) for k, v in vars(value).items())

    def pickle_of(tree: Any) -> bytes | None:
        kept = pickled.get(id(tree))
        if kept is not None and kept[0] is tree:
            return kept[1]
        data = pickle.dumps(tree, pickle.HIGHEST_PROTOCOL) if plain(tree) else None
        _bounded_put(pickled, id(tree), (tree, data))  # the tree is held: its id stays its own
        return data

    def __init__(
        self: Any,
        expression: Any,
        expression_attribute_names: Any,
        expression_attribute_values: Any,
        item: Any,
        table: Any,
    ) -> None:
        data = pickle_of(expression) if _kept_update_tree(expression) else None
        if data is None:
            init(self, expression, expression_attribute_names, expression_attribute_values, item, table)
            self._fast_moto_tree = None
            return
        # moto's Validator.__init__, with the copy made from the pickle
        self.expression_attribute_names = expression_attribute_names
        self.expression_attribute_values = expression_attribute_values
        self.item = item
        self.table = table
        self.processors = self.get_ast_processors()
        self.node_to_validate = pickle.loads(data)  # noqa: S301 - our own pickle of our own tree
        self._fast_moto_tree = expression

    def validate(self: Any) -> Any:
        node, processors, key = self.node_to_validate, self.processors, None
        if self._fast_moto_tree is not None and tuple(type(p) for p in processors[:3]) == checks:
            try:
                names = json.dumps(self.expression_attribute_names)
            except (TypeError, ValueError):
                names = None
            if names is not None:
                key = (id(self._fast_moto_tree), names, tuple(self.table.table_key_attrs))
                if passed.get(key) is self._fast_moto_tree:
                    processors = processors[3:]
                    key = None
        for done, processor in enumerate(processors, start=1):
            node = processor.traverse(node)
            if key is not None and done == len(checks):
                _bounded_put(passed, key, self._fast_moto_tree)
        return node

    validate._once = True  # type: ignore[attr-defined]
    validator.__init__ = __init__  # type: ignore[method-assign]
    validator.validate = validate  # type: ignore[method-assign]


def _pick_dict_attributes_once() -> None:
    """Find the names an attribute of a plain dict may have once per (shape, name).

    moto's response serializer looks every attribute of every object in an answer up
    under each of its possible names (``AttributePicker.get_possible_keys``): it builds
    the picker's alias providers (an explicit alias from the object's ``Meta``, the
    shape's name, the name itself, the parent shape's prefix, the object's class name,
    the model's serialization name) and asks each. A query of 250 ledger entries asks
    thousands of times, a quarter of the local AWS's CPU for it. For a plain ``dict``
    the answer depends on the shape and the name alone: a dict has no ``Meta`` and its
    class name is always ``dict``. So for dicts the names are kept per (alias providers,
    shape, name), in moto's order, each entry holding the shape and providers it was
    made with (their ids stay theirs); any other object goes moto's way every time.
    """
    from moto.core import serialize

    picker = serialize.AttributePicker
    if getattr(picker.get_possible_keys, "_once", False):
        return
    original = picker.get_possible_keys
    kept: dict[tuple[int, int, str], tuple[tuple[str, ...], Any, Any]] = {}

    def get_possible_keys(self: Any, context: Any) -> Any:
        if type(context.obj) is not dict:
            return original(self, context)
        key = (id(self.alias_providers), id(context.shape), context.key)
        found = kept.get(key)
        if found is None or found[1] is not context.shape or found[2] is not self.alias_providers:
            found = (tuple(original(self, context)), context.shape, self.alias_providers)
            _bounded_put(kept, key, found)
        return iter(found[0])

    get_possible_keys._once = True  # type: ignore[attr-defined]
    picker.get_possible_keys = get_possible_keys  # type: ignore[method-assign]
