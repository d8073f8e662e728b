"""fastkv.ctl"""
