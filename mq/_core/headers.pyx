"""Headers exchange matching, following RabbitMQ's rabbit_exchange_type_headers.

Values are compared as RabbitMQ compares its decoded field values (Erlang
`==`), mapped onto what pamqp decodes:
- a bool (an atom in Erlang) only equals a bool, so True != 1;
- a decimal (a {scale, value} tuple in Erlang) only equals a decimal with the
  same digits and scale, so Decimal("1.0") != Decimal("1") != 1;
- str and bytes are both binaries in Erlang: equal when the UTF-8 bytes are;
- lists and tables compare element by element with these rules;
- anything else uses Python equality (1 == 1.0 holds in Erlang too).
"""
from decimal import Decimal

cdef enum _Mode:
    ALL = 0
    ANY = 1

_X_MATCH = {
    "all": (ALL, False),
    "any": (ANY, False),
    "all-with-x": (ALL, True),
    "any-with-x": (ANY, True),
}
_MISSING = object()


cdef bint _amqp_eq(object a, object b) except -1:
    cdef type ta = type(a), tb = type(b)
    if ta is tb and (ta is str or ta is int or ta is bytes):
        return a == b           # the common case, first
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta is Decimal or tb is Decimal:
        return ta is tb and a.as_tuple() == b.as_tuple()
    if ta is str and tb is bytes:
        return (<str>a).encode("utf-8") == b
    if ta is bytes and tb is str:
        return a == (<str>b).encode("utf-8")
    if ta is list or tb is list:
        if ta is not tb or len(a) != len(b):
            return False
        for x, y in zip(a, b):
            if not _amqp_eq(x, y):
                return False
        return True
    if ta is dict or tb is dict:
        if ta is not tb or a.keys() != b.keys():
            return False
        for k, v in a.items():
            if not _amqp_eq(v, b[k]):
                return False
        return True
    return a == b


cdef class HeadersMatcher:
    """The match rule of one headers-exchange binding, parsed once at bind time."""
    cdef _Mode _mode
    cdef tuple _keys            # binding keys that take part in the match
    cdef tuple _values          # their values; None (void) means "present"

    def __init__(self, dict binding_args):
        """Parse binding_args; ValueError on an invalid x-match (406 on bind)."""
        if binding_args is None:
            binding_args = {}
        x_match = binding_args.get("x-match", "all")
        if type(x_match) is not str:
            raise ValueError(
                f"Invalid x-match field type {type(x_match).__name__} "
                f"(value {x_match!r}); expected longstr")
        try:
            self._mode, with_x = _X_MATCH[x_match]
        except KeyError:
            raise ValueError(
                f"Invalid x-match field value {x_match!r}; expected all, any, "
                "all-with-x, or any-with-x") from None
        # x-match itself never takes part; other x- keys only in -with-x forms.
        items = [(k, v) for k, v in binding_args.items()
                 if k != "x-match" and (with_x or not k.startswith("x-"))]
        self._keys = tuple(k for k, _ in items)
        self._values = tuple(v for _, v in items)

    def matches(self, dict headers) -> bool:
        """True if a message with these headers (None = no headers) matches."""
        cdef Py_ssize_t i
        cdef object key, value, got
        cdef object missing = _MISSING
        cdef bint hit
        if headers is None:
            headers = {}
        for i in range(len(self._keys)):
            key = self._keys[i]
            value = self._values[i]
            got = headers.get(key, missing)
            hit = got is not missing and (value is None or _amqp_eq(value, got))
            if self._mode == ANY:
                if hit:
                    return True
            elif not hit:
                return False
        # All: every key hit (vacuously true); any: none did (so no keys: false).
        return self._mode == ALL
