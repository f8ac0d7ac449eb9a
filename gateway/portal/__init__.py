"""The secure portal: recipients without verified TLS or keys read their message on the web."""
