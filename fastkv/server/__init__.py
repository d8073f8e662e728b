"""fastkv.server"""
