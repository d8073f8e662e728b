"""The member: the node (log -> commit -> apply pipeline), membership and the server process."""
