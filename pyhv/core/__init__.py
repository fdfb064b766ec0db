"""pyhv's core: the KVM handle and capabilities, guest memory, vCPUs, the run loop, buses for
port IO, MMIO and MSRs, C fast paths, and the partition lifecycle (built on
:mod:`pyhv._native` and :mod:`pyhv.x86`)."""
