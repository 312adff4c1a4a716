from bgrm.cli import main

main()
