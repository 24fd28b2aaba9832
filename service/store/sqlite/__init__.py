"""What only SQLite needs: the commit queue, the locks its server processes share, slot files, backup."""
