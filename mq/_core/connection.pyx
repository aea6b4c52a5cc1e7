# cython: language_level=3
"""A connection's per-read loop: the events the frame reader cut from the buffer, handled
in order. A publish (method, header and body in one piece) and a basic.ack go straight to
their channel's core (mq._core.channel); every other frame, and anything unusual about those
two, goes to the Python Connection (mq.amqp.connection, a subclass): `_frame`,
`_protocol_header`, `_replay`, `_hot_failed`, `_hold_rest`, `_message_complete`, `_block`."""
from mq._core.channel cimport ChannelCore
from mq._core.frames import EVENT_ACK as _EVENT_ACK, EVENT_PUBLISH as _EVENT_PUBLISH

cdef int EVENT_PUBLISH = _EVENT_PUBLISH
cdef int EVENT_ACK = _EVENT_ACK
# Bytes of frames handled per event-loop turn (B-FLOW-4): the rest of a big read waits for
# the next turn, so one connection's flood delays the others by about this much work.
READ_SLICE = 64 * 1024


cdef class ConnectionCore:
    """The channel table, the reading state and the loop over one slice of events."""

    def __cinit__(self, *args, **kwargs):
        self.channels = {}
        self.pending_dispatch = {}
        self.alarms = ()

    def _process(self) -> bool:
        """Handle one slice of buffered frames; True when frames may remain."""
        if self.state == "header" and not self._protocol_header():
            return False
        events = self._held_events
        if events is not None:
            self._held_events = None
        else:
            events = self.reader.events(READ_SLICE)
        cdef int kind
        for event in <list>events:
            kind = (<tuple>event)[0]
            if kind == EVENT_PUBLISH or kind == EVENT_ACK:
                self._hot(<tuple>event)
            else:
                self._frame(*event)
                if self._disk_wait is not None:  # B-DUR-9: the rest waits for the disk
                    self._hold_rest(events, event)
                    return True
            if self.closed:
                return False
            if self.alarms and not self.blocked and (
                    kind == EVENT_PUBLISH
                    or (kind == 2 or kind == 3) and self._message_complete((<tuple>event)[1])):
                self._block()
        return bool(events) and self.reader.pending() > 0

    cdef void _hot(self, tuple event) except *:
        """A publish (with its content) or an ack that the frame reader decoded itself.
        Anything unusual replays it as frames, so errors come out as they would."""
        ch = self.channels.get(event[1])
        if self.state != "open" or ch is None or not (<ChannelCore>ch).ready_for_publish():
            self._replay(event)
            return
        try:  # (the channel notes the method; _hot_failed takes it from there)
            if event[0] == EVENT_ACK:
                (<ChannelCore>ch).ack_assembled(event[2], event[3])
            else:
                (<ChannelCore>ch).publish_assembled(event[2], event[3], event[4], event[5],
                                                    event[6])
        except Exception as exc:
            self._hot_failed(ch, exc)
