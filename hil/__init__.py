"""hil — the hardware-in-the-loop rig: device simulators, environment files, fault injection."""
