"""Model parts of the IoU-aware RetinaNet, each testable alone."""
