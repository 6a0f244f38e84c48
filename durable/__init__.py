"""Durability helpers shared by the agent, the lender and provisioning: files that survive a power cut.

A leaf: it imports nothing of the project. One module per concern:

* `durable.files`: atomic file writes (temporary file, fsync, rename, fsync of
  the directory) and the directory fsync on its own;
* `durable.keyfile`: private key files (32 bytes, mode 0600, created
  exclusively, refused when group or others can read them);
* `durable.oscore`: an OSCORE security context (RFC 8613) as an aiocoap
  context directory on disk, written, checked, opened and closed;
* `durable.sdnotify`: telling systemd (``Type=notify``) what the daemon is doing;
* `durable.exc`: the package's one exception tree.
"""
