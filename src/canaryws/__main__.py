from canaryws.cli import main

main()
