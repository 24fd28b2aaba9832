from service.cli import main

# Guarded: worker processes (anyio's, multiprocessing's) run the parent's main module again, as __mp_main__.
if __name__ == "__main__":
    main()
