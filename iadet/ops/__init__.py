"""Hand-written detection operators: box geometry and NMS."""
