"""The sans-I/O protocol core: pure state machines, no clock, no sockets, no global random."""
