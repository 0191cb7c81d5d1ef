"""Single-producer/single-consumer rings in shared memory, and the one memory-ordering argument.

Each ring has a 64-bit head (written only by the consumer), a 64-bit tail (written only by the
producer) and a flags word (written only by the consumer). The counters only ever grow; slot
`i` of a ring of `n` entries lives at index `i & (n - 1)`. `tail - head` is the number of
filled slots, never more than `n`. Each side keeps a private copy of the counter it owns and
never trusts the peer's word beyond checking it: the server treats the region as hostile.

Memory ordering (x86-64 only; `_require_total_store_order` refuses to run elsewhere):
  * The counters are read and written through a memoryview cast to "Q". CPython moves such an
    item with one aligned 8-byte load or store, which x86-64 performs atomically, so a peer
    never sees a torn counter.
  * Producer: write the slot, then store the tail. x86 does not reorder a store with an earlier
    store, so a consumer that sees the new tail sees the slot's bytes.
  * Consumer: load the tail, then load the slot. x86 does not reorder a load with an earlier
    load, so the slot read is at least as new as the tail read. Then it stores the head; x86
    does not move a store before an earlier load, so the producer cannot reuse a slot that is
    still being read.
  * Parking is the one store-then-load pattern x86 *may* reorder: the consumer stores
    NEED_WAKEUP then re-reads the tail, while the producer stores the tail then reads the flag.
    Without a full fence on both sides each could read the other's old value and the wake-up
    would be lost. `full_fence` sits between the store and the load on both sides (Dekker's
    argument: at least one side then sees the other's store). Should it ever fail anyway, the
    sleeper's bounded sleep (limits.SLEEP_BOUND) turns a lost wake-up into a short delay.

None of this module does I/O: the eventfd writes and sleeps live in `channel.transport.doorbell`.
"""

from __future__ import annotations

import platform
import threading

from channel.protocol.errors import ProtocolError
from channel.protocol.layout import NEED_WAKEUP, Region


def _require_total_store_order() -> None:
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        raise RuntimeError(
            f"ringfs rings rely on x86-64 memory ordering; this machine is {machine!r}"
        )


_require_total_store_order()

_fence_lock = threading.Lock()
_fence_acquire = _fence_lock.acquire
_fence_release = _fence_lock.release


def full_fence() -> None:
    """A full memory barrier, about 0.3 µs.

    CPython offers no fence, but an uncontended `threading.Lock` is a glibc semaphore whose
    acquire and release are LOCK-prefixed read-modify-writes (cmpxchg, xadd), and every locked
    instruction is a full barrier on x86-64: the stores before it become visible before the
    loads after it are performed.
    """
    _fence_acquire()
    _fence_release()


class _RingEnd:
    __slots__ = ("_flags_index", "_head_index", "_tail_index", "_words", "entries", "mask", "slots")

    def __init__(
        self, region: Region, head: int, tail: int, flags: int, slots_offset: int, entries: int
    ) -> None:
        self._words = region.words
        self._head_index = head // 8
        self._tail_index = tail // 8
        self._flags_index = flags // 8
        self.entries = entries
        self.mask = entries - 1
        #: One memoryview per slot, made once: slicing on every command would allocate.
        self.slots = [region.slot(slots_offset, i) for i in range(entries)]


class RingProducer(_RingEnd):
    """The producing end: fills slots and publishes the tail."""

    __slots__ = ("tail",)

    def __init__(
        self, region: Region, head: int, tail: int, flags: int, slots_offset: int, entries: int
    ) -> None:
        super().__init__(region, head, tail, flags, slots_offset, entries)
        self.tail: int = self._words[self._tail_index]

    def free_slots(self) -> int:
        """Slots the producer may fill now; ProtocolError if the consumer's head is impossible."""
        used = self.tail - self._words[self._head_index]
        if not 0 <= used <= self.entries:
            raise ProtocolError(f"ring head is corrupt ({used} slots in use of {self.entries})")
        return self.entries - used

    def next_slot(self) -> memoryview:
        """The slot to fill next; only valid while free_slots() > 0."""
        return self.slots[self.tail & self.mask]

    def publish(self, count: int = 1) -> bool:
        """Make `count` filled slots visible; True if the consumer is parked and must be woken."""
        tail = self.tail + count
        self.tail = tail
        words = self._words
        words[self._tail_index] = tail
        # full_fence(), inlined: the tail store must be visible before the flag is read.
        _fence_acquire()
        _fence_release()
        return bool(words[self._flags_index] & NEED_WAKEUP)


class RingConsumer(_RingEnd):
    """The consuming end: reads slots in order and publishes the head."""

    __slots__ = ("head",)

    def __init__(
        self, region: Region, head: int, tail: int, flags: int, slots_offset: int, entries: int
    ) -> None:
        super().__init__(region, head, tail, flags, slots_offset, entries)
        self.head: int = self._words[self._head_index]

    def available(self) -> int:
        """Filled slots waiting; ProtocolError if the producer's tail is impossible."""
        ready = self._words[self._tail_index] - self.head
        if not 0 <= ready <= self.entries:
            raise ProtocolError(f"ring tail is corrupt ({ready} slots ready of {self.entries})")
        return ready

    def current_slot(self) -> memoryview:
        """The oldest filled slot; only valid while available() > 0."""
        return self.slots[self.head & self.mask]

    def release(self, count: int = 1) -> None:
        """Hand `count` consumed slots back to the producer."""
        self.head += count
        self._words[self._head_index] = self.head

    def prepare_park(self) -> bool:
        """Announce that the consumer is about to sleep; False if work arrived meanwhile, in
        which case the flag is already cleared again and the consumer must not sleep."""
        words, index = self._words, self._flags_index
        words[index] = words[index] | NEED_WAKEUP
        full_fence()  # the flag store must be visible before the tail is re-read
        if self.available():
            words[index] = words[index] & ~NEED_WAKEUP
            return False
        return True

    def finish_park(self) -> None:
        """Back from sleep: producers need not ring any more."""
        words, index = self._words, self._flags_index
        words[index] = words[index] & ~NEED_WAKEUP

    @property
    def parked(self) -> bool:
        return bool(self._words[self._flags_index] & NEED_WAKEUP)
