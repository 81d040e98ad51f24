"""Services on Redis, SMTP and SQL: the Redis pool, lock, scheduler, distributed
cache, mailer, audit store and shared configuration."""
