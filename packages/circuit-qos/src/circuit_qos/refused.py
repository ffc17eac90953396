"""What a refused tc or link request means to the user: below tc (pyroute2's path) and plan
(the kept plan's path), which both send shaping requests."""

import errno

from circuit_common.errors import CircuitError, EnvironmentFault, KernelUnsupported, NotFound


def explain(e: OSError, delay: bool) -> Exception:
    """The circuit error a refused tc or link request stands for."""
    if delay and e.errno in (errno.ENOENT, errno.EOPNOTSUPP):
        return KernelUnsupported("this kernel has no netem qdisc (sch_netem), so --delay cannot "
                                 "be applied; load sch_netem or use a kernel that has it")
    if e.errno in (errno.EPERM, errno.EACCES):
        return EnvironmentFault(f"tc refused: {e.strerror}; shaping needs CAP_NET_ADMIN "
                                "(run as root)")
    if e.errno in (errno.ENOMEM, errno.ENOBUFS, errno.ENOSPC):
        return EnvironmentFault(f"tc refused: {e.strerror}; the kernel is out of memory")
    if e.errno in (errno.ENODEV, errno.ENOENT):
        return NotFound(f"tc refused: {e.strerror}; a device of the attachment has gone "
                        "(the container exited?)")
    if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
        return KernelUnsupported(f"tc refused: {e.strerror}; this kernel lacks HTB, ingress, "
                                 "u32, mirred or ifb")
    return CircuitError(f"tc failed: {e.strerror}")
