"""pcap and pcapng files -> the same batches as live capture.

Hand-written with precompiled structs over a read-only mmap of the file: records are decoded
in place and the decoder drops data segments after reading one byte of TCP, so replay runs at
hundreds of thousands of packets per second on one core.

- pcap: microsecond (a1b2c3d4) and nanosecond (a1b23c4d) magic, either byte order.
- pcapng: SHB (byte order per section), IDB (link type, if_tsresol, if_tsoffset per interface),
  EPB, SPB and the obsolete OPB; every other block is skipped by its length.

A file that is not pcap/pcapng raises `PcapError` with one line at open.  A truncated tail (a
record or block cut short, e.g. a capture killed mid-write) is counted and ends the stream.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Final

from podwire.capture.decode import Decoder, FrameDecoder
from podwire.model import Batch, Segment

PCAP_MAGIC_US: Final = 0xA1B2C3D4
PCAP_MAGIC_NS: Final = 0xA1B23C4D
PCAPNG_SHB: Final = 0x0A0D0D0A
PCAPNG_BYTE_ORDER: Final = 0x1A2B3C4D
PCAPNG_IDB: Final = 1
PCAPNG_OPB: Final = 2
PCAPNG_SPB: Final = 3
PCAPNG_EPB: Final = 6
_OPT_END: Final = 0
_OPT_IF_TSRESOL: Final = 9
_OPT_IF_TSOFFSET: Final = 14

_BATCH_PACKETS: Final = 65536  # records read per poll(): bounds the batch, keeps poll short


class PcapError(Exception):
    """The file cannot be read as pcap or pcapng; str() is one line for the user."""


class PcapStats:
    __slots__ = ("blocks_skipped", "packets", "truncated", "unsupported_interface")

    def __init__(self) -> None:
        self.packets = 0  # records handed to the decoder
        self.truncated = 0  # a cut-short record/block at the end of the file (ends the stream)
        self.blocks_skipped = 0  # pcapng blocks of types we do not need
        self.unsupported_interface = 0  # packets on an interface id no IDB declared


@dataclass(frozen=True, slots=True)
class _Iface:
    decode: FrameDecoder
    units_per_s: float  # timestamp units per second (if_tsresol)
    offset_s: int  # if_tsoffset


class _Section:
    """Structs for one pcapng section's byte order."""

    __slots__ = ("epb", "hdr", "idb", "opb", "opt", "u32", "u64")

    def __init__(self, bo: str) -> None:
        self.hdr = struct.Struct(bo + "II")  # block type, total length
        self.epb = struct.Struct(bo + "IIIII")  # interface, ts high, ts low, caplen, origlen
        self.opb = struct.Struct(bo + "HHIIII")  # interface, drops, ts high, ts low, caplen, len
        self.idb = struct.Struct(bo + "HHI")  # linktype, reserved, snaplen
        self.opt = struct.Struct(bo + "HH")  # option code, length
        self.u32 = struct.Struct(bo + "I")
        self.u64 = struct.Struct(bo + "q")


def _open_bytes(path: str) -> tuple[mmap.mmap | bytes, int]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise PcapError(f"cannot open {path}: {exc.strerror}") from None
    try:
        try:
            size = os.fstat(fd).st_size
            if size > 0:
                return mmap.mmap(fd, size, prot=mmap.PROT_READ), size
        except (OSError, ValueError):
            pass
        # Pipes, /dev/stdin and other unmappable files: read it all.
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        return data, len(data)
    except OSError as exc:
        raise PcapError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


class PcapSource:
    """`PacketSource` over a pcap or pcapng file; `poll()` returns None at the end."""

    def __init__(
        self, path: str, *, dns: bool = False, tls: bool = False, batch_packets: int = _BATCH_PACKETS
    ) -> None:
        self.path = path
        self.decoder = Decoder(dns=dns, tls=tls)
        self.stats = PcapStats()
        self._batch = batch_packets
        self._buf, self._size = _open_bytes(path)
        self._done = False
        self._ifaces: list[_Iface] = []
        self._sec: _Section | None = None
        if self._size < 4:
            self.close()
            raise PcapError(f"{path} is not a pcap or pcapng file (only {self._size} bytes)")
        magic_le = struct.unpack_from("<I", self._buf, 0)[0]
        if magic_le == PCAPNG_SHB:
            self._format = "pcapng"
            self._pos = 0
            if not self._read_shb_at_start():
                self.close()
                raise PcapError(f"{path}: pcapng section header is damaged")
        else:
            self._format = "pcap"
            self._open_pcap(magic_le)

    # ---- pcap ------------------------------------------------------------------------------

    def _open_pcap(self, magic_le: int) -> None:
        magic_be = struct.unpack_from(">I", self._buf, 0)[0]
        if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            bo = "<"
            magic = magic_le
        elif magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            bo = ">"
            magic = magic_be
        else:
            self.close()
            raise PcapError(f"{self.path} is not a pcap or pcapng file (magic 0x{magic_be:08x})")
        if self._size < 24:
            self.close()
            raise PcapError(f"{self.path}: pcap file header is cut short ({self._size} of 24 bytes)")
        _major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack_from(bo + "HHiIII", self._buf, 4)
        self.linktype = network & 0x0FFFFFFF  # upper bits may carry FCS information
        self._ns = magic == PCAP_MAGIC_NS
        self._rec = struct.Struct(bo + "IIII")
        self._pcap_decode = self.decoder.for_linktype(self.linktype)
        self._pos = 24

    def _poll_pcap(self) -> list[Segment]:
        buf, size, pos = self._buf, self._size, self._pos
        unpack = self._rec.unpack_from
        decode = self._pcap_decode
        scale = 1e-9 if self._ns else 1e-6
        out: list[Segment] = []
        append = out.append
        n = 0
        limit = self._batch
        while n < limit:
            if pos + 16 > size:
                if pos != size:
                    self.stats.truncated += 1
                self._done = True
                break
            sec, frac, incl, _orig = unpack(buf, pos)
            start = pos + 16
            stop = start + incl
            if stop > size:
                self.stats.truncated += 1
                self._done = True
                break
            seg = decode(buf, start, stop, sec + frac * scale, 0, None)
            if seg is not None:
                append(seg)
            pos = stop
            n += 1
        self.stats.packets += n
        self._pos = pos
        return out

    # ---- pcapng ----------------------------------------------------------------------------

    def _read_shb_at_start(self) -> bool:
        """Parse the SHB at self._pos: byte order, length; resets the interface table."""
        buf, pos = self._buf, self._pos
        if pos + 28 > self._size:
            return False
        bom = struct.unpack_from("<I", buf, pos + 8)[0]
        if bom == PCAPNG_BYTE_ORDER:
            sec = _Section("<")
        elif struct.unpack_from(">I", buf, pos + 8)[0] == PCAPNG_BYTE_ORDER:
            sec = _Section(">")
        else:
            return False
        _type, length = sec.hdr.unpack_from(buf, pos)
        if length < 28 or length % 4 or pos + length > self._size:
            return False
        self._sec = sec
        self._ifaces = []
        self._pos = pos + length
        return True

    def _read_idb(self, body: int, body_end: int) -> None:
        sec = self._sec
        assert sec is not None
        linktype, _res, _snap = sec.idb.unpack_from(self._buf, body)
        units = 1e6  # default resolution: microseconds
        offset = 0
        opt = body + 8
        while opt + 4 <= body_end:
            code, olen = sec.opt.unpack_from(self._buf, opt)
            value = opt + 4
            if code == _OPT_END:
                break
            if value + olen > body_end:
                break  # a broken option list: keep what we have
            if code == _OPT_IF_TSRESOL and olen >= 1:
                res = self._buf[value]
                units = float(2 ** (res & 0x7F)) if res & 0x80 else float(10**res)
            elif code == _OPT_IF_TSOFFSET and olen >= 8:
                offset = sec.u64.unpack_from(self._buf, value)[0]
            opt = value + ((olen + 3) & ~3)
        self._ifaces.append(_Iface(self.decoder.for_linktype(linktype), units, offset))

    def _poll_pcapng(self) -> list[Segment]:
        buf, size, pos = self._buf, self._size, self._pos
        out: list[Segment] = []
        append = out.append
        n = 0
        limit = self._batch
        sec = self._sec
        assert sec is not None
        hdr, epb = sec.hdr.unpack_from, sec.epb.unpack_from
        ifaces = self._ifaces
        while n < limit:
            if pos + 12 > size:
                if pos != size:
                    self.stats.truncated += 1
                self._done = True
                break
            btype, length = hdr(buf, pos)
            if btype == PCAPNG_SHB and length != 0:
                self._pos = pos
                if not self._read_shb_at_start() or self._sec is None:
                    self.stats.truncated += 1
                    self._done = True
                    break
                pos = self._pos
                sec = self._sec
                hdr, epb = sec.hdr.unpack_from, sec.epb.unpack_from
                ifaces = self._ifaces
                continue
            if length < 12 or length % 4 or pos + length > size:
                self.stats.truncated += 1  # cut short (or damaged: we cannot find the next block)
                self._done = True
                break
            body = pos + 8
            body_end = pos + length - 4
            if btype == PCAPNG_EPB:
                if body + 20 <= body_end:
                    iface_id, hi, lo, caplen, _orig = epb(buf, body)
                    start = body + 20
                    stop = start + caplen
                    if stop > body_end:
                        self.stats.truncated += 1
                        self._done = True
                        break
                    if iface_id < len(ifaces):
                        n += 1  # handed to the decoder (an unknown interface is counted apart)
                        iface = ifaces[iface_id]
                        seg = iface.decode(
                            buf, start, stop, ((hi << 32) | lo) / iface.units_per_s + iface.offset_s, 0, None
                        )
                        if seg is not None:
                            append(seg)
                    else:
                        self.stats.unsupported_interface += 1
            elif btype == PCAPNG_SPB:
                if body + 4 <= body_end and ifaces:
                    orig = sec.u32.unpack_from(buf, body)[0]
                    start = body + 4
                    stop = min(start + orig, body_end)
                    n += 1
                    seg = ifaces[0].decode(buf, start, stop, 0.0, 0, None)  # SPB carries no timestamp
                    if seg is not None:
                        append(seg)
            elif btype == PCAPNG_IDB:
                if body + 8 <= body_end:
                    self._read_idb(body, body_end)
            elif btype == PCAPNG_OPB:
                if body + 20 <= body_end:
                    iface_id, _drops, hi, lo, caplen, _len = sec.opb.unpack_from(buf, body)
                    start = body + 20
                    stop = min(start + caplen, body_end)
                    if iface_id < len(ifaces):
                        n += 1  # handed to the decoder (an unknown interface is counted apart)
                        iface = ifaces[iface_id]
                        seg = iface.decode(
                            buf, start, stop, ((hi << 32) | lo) / iface.units_per_s + iface.offset_s, 0, None
                        )
                        if seg is not None:
                            append(seg)
                    else:
                        self.stats.unsupported_interface += 1
            else:
                self.stats.blocks_skipped += 1
            pos += length
        self.stats.packets += n
        self._pos = pos
        return out

    # ---- PacketSource ----------------------------------------------------------------------

    @property
    def format(self) -> str:
        return self._format

    def poll(self, timeout: float = 0.0) -> Batch | None:
        """The next batch of segments; None once the file is exhausted.  Never waits."""
        if self._done:
            return None
        segments = self._poll_pcap() if self._format == "pcap" else self._poll_pcapng()
        return Batch(segments, self.decoder.take_dns(), self.decoder.take_tls())

    def __iter__(self) -> PcapSource:
        return self

    def __next__(self) -> Batch:
        batch = self.poll()
        if batch is None:
            raise StopIteration
        return batch

    def close(self) -> None:
        self._done = True
        buf = getattr(self, "_buf", None)
        if isinstance(buf, mmap.mmap):
            buf.close()
