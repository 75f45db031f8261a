"""(being written) Gradient and optimality checks for nodes of either floor."""
__all__ = []
