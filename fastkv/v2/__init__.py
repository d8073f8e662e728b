"""fastkv.v2"""
