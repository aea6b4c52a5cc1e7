"""Topic exchange routing: a trie over the words of the binding patterns.

Words are split on ``.`` as RabbitMQ does: the empty key has no words, and
``a..b`` has an empty middle word. In a pattern, a whole word ``*`` matches
exactly one word and ``#`` matches zero or more.
"""

cdef class _Node:
    """One trie node: the pattern prefix spelled by the path from the root."""
    cdef dict children          # literal word -> _Node, None until needed
    cdef _Node star             # the `*` child
    cdef _Node hash             # the `#` child
    cdef set dests              # dests of patterns ending here, None until needed
    # For `#` nodes: the number of the last match that entered this node, so
    # each match enters it once, which keeps patterns like #.#.#.# polynomial.
    cdef unsigned long long epoch

    cdef bint is_empty(self):
        return (not self.dests and not self.children
                and self.star is None and self.hash is None)

    cdef _Node child(self, str word):
        if word == "*":
            return self.star
        if word == "#":
            return self.hash
        if self.children is None:
            return None
        return self.children.get(word)

    cdef _Node add_child(self, str word):
        cdef _Node node = self.child(word)
        if node is not None:
            return node
        node = _Node()
        if word == "*":
            self.star = node
        elif word == "#":
            self.hash = node
        else:
            if self.children is None:
                self.children = {}
            self.children[word] = node
        return node

    cdef void drop_child(self, str word):
        if word == "*":
            self.star = None
        elif word == "#":
            self.hash = None
        else:
            del self.children[word]
            if not self.children:
                self.children = None


cdef inline list _split(str key):
    # RabbitMQ: "" is zero words; otherwise str.split gives the same words.
    return key.split(".") if key else []


cdef class TopicTable:
    """The (pattern, dest) bindings of one topic exchange."""
    cdef _Node _root
    cdef Py_ssize_t _count
    cdef unsigned long long _epoch
    # Per-match state, kept on the table to avoid passing it down the recursion.
    cdef list _words
    cdef Py_ssize_t _nwords
    cdef set _found

    def __cinit__(self):
        self._root = _Node()

    def __len__(self) -> int:
        return self._count

    def bind(self, str pattern, object dest) -> bool:
        """Add (pattern, dest); True if the pair was not bound before."""
        cdef _Node node = self._root
        for word in _split(pattern):
            node = node.add_child(word)
        if node.dests is None:
            node.dests = set()
        elif dest in node.dests:
            return False
        node.dests.add(dest)
        self._count += 1
        return True

    def unbind(self, str pattern, object dest) -> bool:
        """Remove (pattern, dest); True if it was bound. Prunes emptied nodes."""
        cdef list words = _split(pattern)
        cdef list path = [self._root]
        cdef _Node node = self._root
        cdef Py_ssize_t i
        for word in words:
            node = node.child(word)
            if node is None:
                return False
            path.append(node)
        if node.dests is None or dest not in node.dests:
            return False
        node.dests.remove(dest)
        if not node.dests:
            node.dests = None
        self._count -= 1
        for i in range(len(words) - 1, -1, -1):
            if not (<_Node>path[i + 1]).is_empty():
                break
            (<_Node>path[i]).drop_child(words[i])
        return True

    def match(self, str routing_key) -> list:
        """Every dest whose pattern matches routing_key, each once, any order."""
        self._epoch += 1
        self._words = _split(routing_key)
        self._nwords = len(self._words)
        self._found = set()
        try:
            self._visit(self._root, 0)
            return list(self._found)
        finally:
            self._words = None
            self._found = None

    cdef void _visit(self, _Node node, Py_ssize_t i) except *:
        """Continue at `node` with the first `i` words of the key consumed."""
        cdef _Node child
        if i == self._nwords:
            if node.dests:
                self._found.update(node.dests)
        else:
            if node.children is not None:
                child = node.children.get(self._words[i])
                if child is not None:
                    self._visit(child, i + 1)
            if node.star is not None:
                self._visit(node.star, i + 1)
        if node.hash is not None:
            self._visit_hash(node.hash, i)

    cdef void _visit_hash(self, _Node node, Py_ssize_t i) except *:
        """Enter a `#` node at word i: it may swallow words i..j-1 for any j."""
        # Depth first with ascending j, a match first enters each `#` node at
        # the lowest index it can reach it with; that entry covers i..end, so
        # any later entry (at a higher index) would only repeat work.
        cdef Py_ssize_t j
        if node.epoch == self._epoch:
            return
        node.epoch = self._epoch
        for j in range(i, self._nwords + 1):
            self._visit(node, j)
