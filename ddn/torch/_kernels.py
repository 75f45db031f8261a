"""(kernel being written)"""
ENABLED = False
def usable(x):
    return False
