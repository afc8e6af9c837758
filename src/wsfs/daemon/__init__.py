"""The FUSE daemon: one version of a workspace, mounted read-only and fetched lazily.

Modules, top to bottom (each imports only the ones below it, plus ``cache``,
``format``, ``repository`` and ``errors``):

``cli``      the ``mount``, ``umount`` and ``stats`` subcommands (``register``)
``mount``    lifecycle: open the version, ``pyfuse3.init``, ready signal,
             background mode, signals, control socket, clean unmount
``control``  the control socket (JSON over AF_UNIX) and its client
``ops``      the ``pyfuse3.Operations`` adapter: arguments in, errno out
``view``     :class:`~wsfs.daemon.view.VersionView`, a version tree as the
             kernel sees it (attributes, entries, bytes), over a manifest and
             the blob cache

pyfuse3 is imported by ``view``, ``ops`` and ``mount`` only; the cache below
never sees a FUSE type.
"""
