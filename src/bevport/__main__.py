from bevport.cli import main

main()
