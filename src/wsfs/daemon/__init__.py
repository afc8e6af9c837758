"""The FUSE daemon: one version of a workspace, mounted read-only and fetched lazily.

Modules, top to bottom (each imports only the ones below it, plus ``cache``,
``format``, ``repository`` and ``errors``):

``cli``      the ``mount``, ``umount`` and ``stats`` subcommands (``register``)
``mount``    lifecycle: open the version, ``pyfuse3.init``, ready signal,
             background mode, signals, control socket, clean unmount
``control``  the control socket (JSON over AF_UNIX) and its client
``ops``      the ``pyfuse3.Operations`` adapter: arguments in, errno out
``inodes``   the kernel's lookup counts and ``forget`` (``InodeTable``)
``handles``  open files and directories (``HandleTable``)
``policy``   ``CachePolicy``: kernel-cache timeouts and the requests answered
             ``ENOSYS``, chosen per mount mode
``history``  :class:`~wsfs.daemon.history.HistoryView`, every version of a
             workspace as ``<mnt>/<n>``
``view``     :class:`~wsfs.daemon.view.VersionView`, one version's tree
             (attributes, entries, bytes) over a manifest and the blob cache
``tree``     the ``Tree`` interface both views implement, in plain wsfs types

pyfuse3 is imported by ``ops`` and ``mount`` only: the trees below never see
a FUSE type.
"""
