//! The procedures that combine cutover's parts: the database switchover and its rollback.
