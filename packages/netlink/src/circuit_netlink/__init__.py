"""circuit's one netlink core: a socket, its framing, dumps and acknowledgements, many requests
per system call.

The low layer needs no pyroute2: Batch sends requests given as bytes (add_request) and reads
the kernel's answers as bytes (query_bytes); attribute() and attributes() pack and read
netlink attributes, and circuit_netlink.rtnl spells the few link and address messages
circuit-net needs. On it, requests encoded by pyroute2's message classes: Batch.add and
Batch.query take pyroute2 messages, and a Template copies one pyroute2 encoding for many
requests. pyroute2's own sockets send one request and wait for its answer through an asyncio
loop, about 1 ms a request; a Batch sends them in chunks, what thousands of IPVS targets or the
tc objects of fifty attachments need.

A tool that uses pyroute2 calls lean_pyroute2() before it imports pyroute2's modules, which it
does inside the functions that need them; importing this package alone loads no pyroute2.
"""

import _socket  # not socket, which builds its enums on import
import errno
import os
import struct
import sys
from itertools import repeat

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10  # on a message of a dump: what was dumped changed while it was read
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
CREATE = NLM_F_CREATE | NLM_F_EXCL  # make it; EEXIST if it is there
REPLACE = NLM_F_CREATE | NLM_F_REPLACE  # make it, or replace what is there
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # an error acknowledgement carries only the request's header
CHUNK = 64  # requests per send: their refusals must fit the receive buffer
HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
SEQUENCE = struct.Struct("=I")  # nlmsghdr's sequence number, at offset 8
NLA = struct.Struct("=HH")  # nlattr: length, type
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
RECEIVE = 1 << 16  # bytes per read: more than the kernel puts in one message of a dump
ANSWER_TIMEOUT = 10.0  # seconds the kernel may take to answer a batch
DUMP_ATTEMPTS = 10  # dumps tried when each is interrupted, before giving up
PYROUTE2_SERIES = "0.9"  # the minor version Template's slots were verified against


def lean_pyroute2() -> None:
    """Let `import pyroute2.x.y` load only what x.y needs, not the package's __init__, which
    imports every API pyroute2 has (0.1 s here, seconds in the kernel tier's VM). The __init__
    still runs the first time a name is looked up on the package itself."""
    if "pyroute2" in sys.modules:
        return
    import importlib
    import importlib.util

    spec = importlib.util.find_spec("pyroute2")
    package = importlib.util.module_from_spec(spec)

    def submodule_or_init(name: str):
        try:  # `from pyroute2 import config` in pyroute2's own modules
            return importlib.import_module(f"pyroute2.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"pyroute2.{name}":
                raise
        del package.__getattr__
        spec.loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = submodule_or_init
    sys.modules["pyroute2"] = package


def pyroute2_version() -> str | None:
    """The version of the pyroute2 that `import pyroute2` would load, from the dist-info
    directory installed beside it, without importing it (None when there is none)."""
    for directory in sys.path:
        directory = directory or "."
        if os.path.isdir(os.path.join(directory, "pyroute2")):
            for name in os.listdir(directory):
                if name.startswith("pyroute2-") and name.endswith(".dist-info"):
                    return name[len("pyroute2-"):-len(".dist-info")]
            return None
    return None


class Batch:
    """Requests for one netlink protocol, sent together by `send()`."""

    def __init__(self, protocol: int, sock=None):
        """A Batch on a new netlink socket of protocol, or on sock (a test's socketpair that
        stands in for the kernel)."""
        if sock is None:
            sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                                  protocol)
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock = sock
        self.sock.settimeout(ANSWER_TIMEOUT)  # a kernel that never answers is an error
        self.sequence = 0
        self.pending: list[tuple[int, bytes, tuple[int, ...]]] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _encode(self, msg, flags: int) -> tuple[int, bytes]:
        self.sequence += 1
        msg["header"]["flags"] = flags | NLM_F_REQUEST
        msg["header"]["sequence_number"] = self.sequence
        msg.encode()
        return self.sequence, bytes(msg.data)

    def add(self, msg, flags: int = 0, ignore: tuple[int, ...] = ()) -> None:
        """Queue a request encoded by pyroute2 (msg["header"]["type"] set); errors in ignore
        count as success."""
        sequence, data = self._encode(msg, flags)
        self.pending.append((sequence, data, ignore))

    def add_request(self, kind: int, body: bytes, flags: int = 0,
                    ignore: tuple[int, ...] = ()) -> None:
        """Queue a request of message type kind whose payload is body (no pyroute2)."""
        self.sequence += 1
        self.pending.append((self.sequence, _request(kind, flags, self.sequence, body), ignore))

    def add_copy(self, template: "Template", values: dict[str, bytes],
                 ignore: tuple[int, ...] = ()) -> None:
        """Queue a copy of template's request with values in its slots."""
        self.sequence += 1
        self.pending.append((self.sequence, template.copy(self.sequence, values), ignore))

    def add_copies(self, template: "Template", values, ignore: tuple[int, ...] = ()) -> None:
        """Queue a copy of template's request for each dict of slot values in values."""
        copy, pending, sequence = template.copy, self.pending, self.sequence
        for one in values:
            sequence += 1
            pending.append((sequence, copy(sequence, one), ignore))
            self.sequence = sequence

    def add_columns(self, template: "Template", columns: dict[str, list[bytes]], count: int,
                    ignore: tuple[int, ...] = ()) -> None:
        """Queue count copies of template's request, copy i with columns[slot][i] in each slot
        named (see Template.copies)."""
        first = self.sequence + 1
        copies = template.copies(first, columns, count)
        self.pending.extend(zip(range(first, first + count), copies, repeat(ignore)))
        self.sequence += count

    def send(self) -> int:
        """Send the queued requests in order; NetlinkError for the first the kernel refused.

        The kernel answers only a refusal, and the last request of each chunk (NLM_F_ACK): it
        handles a chunk's requests in order, so that answer comes after every refusal. The
        requests of the chunk that failed are all tried; later chunks are not sent. The
        error's `done` lists the positions (in the order added) of the requests carried out.
        Returns how many requests were sent."""
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), CHUNK):
            chunk = pending[start:start + CHUNK]
            sequences, datas, codes = zip(*chunk, strict=True)  # C loops: thousands
            last = bytearray(datas[-1])
            struct.pack_into("=H", last, 6, HEADER.unpack_from(last)[2] | NLM_F_ACK)
            self.sock.sendall(b"".join(datas[:-1]) + last)
            ignore = dict(zip(sequences, codes, strict=True))
            refused, answered = {}, False
            while not answered:
                for sequence, kind, _, payload in self._receive():
                    if kind != NLMSG_ERROR or sequence not in ignore:
                        continue
                    code = -struct.unpack_from("=i", payload)[0]
                    if code and code not in ignore[sequence]:
                        refused.setdefault(sequence, code)
                    answered = sequence == chunk[-1][0]
            if refused:
                error = NetlinkError(refused[min(refused)])
                error.done = [i for i, (sequence, _, _) in enumerate(pending[:start + CHUNK])
                              if sequence not in refused]
                raise error
        return len(pending)

    def query(self, msg, flags: int = 0, decode: bool = True) -> list:
        """The kernel's answers to one request encoded by pyroute2 (a get or, with NLM_F_DUMP,
        a dump), decoded with msg's class, or (decode False) each answer's payload as bytes,
        for a caller that reads a few fixed fields of many (pyroute2 decodes every attribute);
        NetlinkError if it refused."""
        return self._ask(self._encode(msg, flags)[1], type(msg) if decode else None)

    def query_bytes(self, kind: int, body: bytes, flags: int = 0) -> list[bytes]:
        """The payloads of the kernel's answers to a request of type kind with payload body
        (a get or, with NLM_F_DUMP, a dump): no pyroute2; NetlinkError if it refused."""
        self.sequence += 1
        return self._ask(_request(kind, flags, self.sequence, body), None)

    def query_copy(self, template: "Template", values: dict[str, bytes] | None = None) -> list:
        """The kernel's answers (payloads as bytes) to a copy of template's request, a get."""
        self.sequence += 1
        return self._ask(template.copy(self.sequence, values or {}), None)

    def _ask(self, data: bytes, decoder) -> list:
        """The answers to request data. A dump the kernel marks interrupted (NLM_F_DUMP_INTR
        on any of its messages: what it lists changed meanwhile) is read to its end and asked
        again under a new sequence number, DUMP_ATTEMPTS times at most."""
        dump = bool(HEADER.unpack_from(data)[2] & NLM_F_DUMP)
        for _ in range(DUMP_ATTEMPTS):
            answers, interrupted = self._answers(data, dump, decoder)
            if not interrupted:
                return answers
            self.sequence += 1
            data = bytearray(data)
            SEQUENCE.pack_into(data, 8, self.sequence)
            data = bytes(data)
        raise NetlinkError(errno.EINTR, f"the kernel's dump was interrupted {DUMP_ATTEMPTS} "
                                        f"times in a row by changes to what it lists; try again")

    def _answers(self, data: bytes, dump: bool, decoder) -> tuple[list, bool]:
        """The answers to one sending of request data, and whether the dump was interrupted."""
        sequence = SEQUENCE.unpack_from(data, 8)[0]
        self.sock.sendall(data)
        answers, interrupted = [], False
        while True:
            for got, kind, flags, payload in self._receive():
                if got != sequence:
                    continue
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise NetlinkError(code)
                    return answers, interrupted
                if kind == NLMSG_DONE:
                    return answers, interrupted
                if decoder is not None:
                    answer = decoder(HEADER.pack(HEADER.size + len(payload), kind, 0, got, 0)
                                     + payload)
                    answer.decode()
                    answers.append(answer)
                else:
                    answers.append(payload)
                if not dump:
                    return answers, interrupted

    def _receive(self):
        """(sequence, type, flags, payload) of each message in one read from the socket."""
        try:
            data = self.sock.recv(RECEIVE)
        except TimeoutError:
            raise NetlinkError(errno.ETIMEDOUT) from None
        offset = 0
        while offset + HEADER.size <= len(data):
            length, kind, flags, sequence, _ = HEADER.unpack_from(data, offset)
            if length < HEADER.size:
                raise NetlinkError(errno.EBADMSG)
            yield sequence, kind, flags, data[offset + HEADER.size:offset + length]
            offset += (length + 3) & ~3


def _request(kind: int, flags: int, sequence: int, body: bytes) -> bytes:
    """One netlink request: its header, then body."""
    return HEADER.pack(HEADER.size + len(body), kind, flags | NLM_F_REQUEST, sequence, 0) + body


def attribute(kind: int, value: bytes) -> bytes:
    """A netlink attribute (nlattr) of type kind holding value, padded to 4 bytes."""
    return NLA.pack(NLA.size + len(value), kind) + value + b"\0" * (-len(value) % 4)


def attributes(data: bytes, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The attributes between start and end of data (its end by default), their values by
    type (NLA_F_NESTED and NLA_F_NET_BYTEORDER dropped); the first of a type repeated wins."""
    end = len(data) if end is None else end
    found = {}
    while start + NLA.size <= end:
        length, kind = NLA.unpack_from(data, start)
        if length < NLA.size:
            break
        found.setdefault(kind & NLA_TYPE_MASK, data[start + NLA.size:start + length])
        start += (length + 3) & ~3
    return found


class Template:
    """One request encoded by pyroute2, for many that differ only in fixed-size values.

    pyroute2 takes about 0.3 ms to encode an IPVS target or an HTB class (seconds for thousands,
    and 30 times that in the VM); a copy of the encoded bytes with new values written where
    pyroute2 put them takes a few µs. slots name those places: a path of attribute names to a
    value (("IPVS_CMD_ATTR_DEST", "IPVS_DEST_ATTR_PORT")), whose last name may be a field
    (("index",): the message's own). Values are given as the kernel reads them (network order
    for be16, and so on)."""

    def __init__(self, msg, flags: int, slots: dict[str, tuple[str, ...]],
                 values: dict[str, bytes]):
        """msg was built with values in its slots: each is checked where the slot points, so a
        pyroute2 whose layout differs fails here instead of sending corrupt copies."""
        msg["header"]["flags"] = flags | NLM_F_REQUEST
        msg.encode()
        self.data = bytes(msg.data)
        self.slots = {name: _span(msg, path) for name, path in slots.items()}
        for name, (start, length) in self.slots.items():
            if self.data[start:start + length] != values[name]:
                raise TemplateMismatch(
                    f"pyroute2 encodes {type(msg).__name__} slot {name} ({'/'.join(slots[name])})"
                    f" as {self.data[start:start + length].hex()}, not {values[name].hex()}: "
                    f"circuit_netlink supports pyroute2 {PYROUTE2_SERIES}.x only")

    def saved(self) -> dict:
        """The encoded request and its slots as JSON values, to keep (see restored)."""
        return {"data": self.data.hex(), "slots": {n: list(s) for n, s in self.slots.items()}}

    @classmethod
    def restored(cls, saved: dict, types: tuple[int, ...]) -> "Template":
        """The Template that saved() gave, checked when it was made: no pyroute2 needed.
        ValueError when saved is not what saved() gives: one whole request, of one of the
        message types the caller sends that way."""
        try:
            data = bytes.fromhex(saved["data"])
            slots = {name: (int(start), int(length))
                     for name, (start, length) in saved["slots"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a saved template: {e}") from None
        if len(data) < HEADER.size or HEADER.unpack_from(data)[0] != len(data):
            raise ValueError("the saved template is not one whole netlink request")
        if HEADER.unpack_from(data)[1] not in types:
            raise ValueError(f"the saved template is a request of type "
                             f"{HEADER.unpack_from(data)[1]}, not one of {types}")
        if any(not HEADER.size <= start <= start + length <= len(data)
               for start, length in slots.values()):
            raise ValueError("a slot of the saved template lies outside its request")
        template = cls.__new__(cls)
        template.data, template.slots = data, slots
        return template

    @property
    def kind(self) -> int:
        """The request's message type."""
        return HEADER.unpack_from(self.data)[1]

    def field(self, offset: int) -> int:
        """The 32-bit value the request holds at offset."""
        return struct.unpack_from("=i", self.data, offset)[0]

    def retyped(self, kind: int) -> "Template":
        """The same request with another message type (a generic netlink family's number,
        which the kernel gives out when the family's module loads)."""
        template = Template.__new__(Template)
        template.data = self.data[:4] + struct.pack("=H", kind) + self.data[6:]
        template.slots = self.slots
        return template

    def stamped(self, values: dict[str, bytes]) -> "Template":
        """A template with values written into some of its slots for good (what all the
        copies of a batch share), the other slots left to copy()."""
        template = Template.__new__(Template)
        template.data = self.copy(SEQUENCE.unpack_from(self.data, 8)[0], values)
        template.slots = {name: span for name, span in self.slots.items() if name not in values}
        return template

    def copy(self, sequence: int, values: dict[str, bytes]) -> bytes:
        """The request with sequence as its number and values in their slots (a slot not in
        values keeps the template's bytes)."""
        try:
            pieces = self._pieces
        except AttributeError:
            pieces = self._pieces = _pieces(self.data, self.slots)
        if not values.keys() <= self.slots.keys():
            unknown = values.keys() - self.slots.keys()
            raise KeyError(f"the template has no slot {sorted(unknown)[0]}")
        if pieces is None:  # overlapping slots: written one after the other
            data = bytearray(self.data)
            struct.pack_into("=I", data, 8, sequence)  # nlmsghdr's sequence number
            for name, value in values.items():
                start, length = self.slots[name]
                _check_size(name, value, length)
                data[start:start + length] = value
            return bytes(data)
        head, lead, tail = pieces
        out = [head, SEQUENCE.pack(sequence), lead]
        for name, length, fixed, after in tail:
            value = values.get(name, fixed)
            if len(value) != length:
                _check_size(name, value, length)
            out.append(value)
            out.append(after)
        return b"".join(out)


    def copies(self, first_sequence: int, columns: dict[str, list[bytes]],
               count: int) -> list[bytes]:
        """count copies of the request numbered from first_sequence on, copy i with
        columns[slot][i] in each slot named (the others keep the template's bytes): what
        copy() gives for each, assembled by C loops (no Python code runs per copy)."""
        if not columns.keys() <= self.slots.keys():
            unknown = columns.keys() - self.slots.keys()
            raise KeyError(f"the template has no slot {sorted(unknown)[0]}")
        for name, column in columns.items():
            if len(column) != count:
                raise ValueError(f"{name}: {len(column)} values for {count} copies")
            for length in {*map(len, column)} - {self.slots[name][1]}:
                _check_size(name, b"\0" * length, self.slots[name][1])
        try:
            pieces = self._pieces
        except AttributeError:
            pieces = self._pieces = _pieces(self.data, self.slots)
        if pieces is None:  # overlapping slots
            return [self.copy(first_sequence + i, {name: column[i] for name, column in
                                                   columns.items()}) for i in range(count)]
        head, fixed, tail = pieces
        parts = [repeat(head), map(SEQUENCE.pack, range(first_sequence,
                                                        first_sequence + count))]
        for name, _, value, after in tail:
            if name in columns:
                parts += [repeat(fixed), columns[name]]
                fixed = after
            else:
                fixed += value + after
        parts.append(repeat(fixed))
        return list(map(b"".join, zip(*parts, strict=False)))  # the repeats never end


def _pieces(data: bytes, slots: dict[str, tuple[int, int]]):
    """data cut around its sequence number and slots, for copy(): the bytes before the
    sequence number, those after it up to the first slot, and [(slot, size, its bytes in
    data, the fixed bytes up to the next slot)]; None when slots overlap."""
    spans = sorted((start, length, name) for name, (start, length) in slots.items())
    ends = [start for start, _, _ in spans[1:]] + [len(data)] if spans else []
    tail, position = [], 12
    for (start, length, name), following in zip(spans, ends, strict=True):
        if start < position or following < start + length:
            return None
        tail.append((name, length, data[start:start + length], data[start + length:following]))
        position = start + length
    return data[:8], data[12:spans[0][0] if spans else len(data)], tail


def _check_size(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise ValueError(f"{name}: {len(value)} bytes where the template has {length}")


def _span(msg, path: tuple[str, ...]) -> tuple[int, int]:
    """(offset, size) of the value at path in msg's encoding: attribute names down to a value,
    the last name possibly a field of the message or attribute reached."""
    node, start = msg, HEADER.size
    for name in path:
        offset = start
        for field, fmt in node.fields:
            size = struct.calcsize("=" + fmt.lstrip("<>!=@"))
            if field == name:
                return offset, size
            offset += size
        node = next(slot.cell[1] for slot in node["attrs"] if slot.cell[0] == name)
        start = node.offset + 4
    return start, node.length - 4


class TemplateMismatch(RuntimeError):
    """pyroute2 laid out a request unlike the version the templates were verified against."""


class NetlinkError(OSError):
    """The kernel refused a request; errno says why (strerror, unless a message is given). From
    Batch.send, done lists the positions of the requests that were carried out."""

    def __init__(self, code: int, message: str | None = None):
        super().__init__(code, message or os.strerror(code))
        self.done: list[int] = []


GENL_ID_CTRL = 16  # generic netlink's own family: its requests name the others
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1


def family_id(batch: Batch, name: str) -> int:
    """The message type of generic netlink family name (IPVS, ...)."""
    return family_of(batch, family_request(name))


def family_request(name: str) -> Template:
    """The request that asks for generic netlink family name, encoded by pyroute2 (a
    Template without slots: it can be kept, see family_of)."""
    lean_pyroute2()
    from pyroute2.netlink import ctrlmsg

    msg = ctrlmsg()
    msg["cmd"] = CTRL_CMD_GETFAMILY
    msg["version"] = 1
    msg["attrs"] = [("CTRL_ATTR_FAMILY_NAME", name)]
    msg["header"]["type"] = GENL_ID_CTRL
    return Template(msg, 0, {}, {})


def family_of(batch: Batch, request: Template) -> int:
    """The message type of the generic netlink family that request (family_request's) asks
    for: CTRL_ATTR_FAMILY_ID, read from the answer's attributes."""
    payload = batch.query_copy(request)[0]
    found = attributes(payload, 4)  # after genlmsghdr: cmd, version, reserved
    if len(found.get(CTRL_ATTR_FAMILY_ID, b"")) < 2:
        raise NetlinkError(errno.EBADMSG)
    return struct.unpack_from("=H", found[CTRL_ATTR_FAMILY_ID])[0]
